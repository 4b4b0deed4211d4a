"""Synthetic chest-CT phantoms with LUNA16-style annotations (numpy only, no torch).

The default data of the demo, the tests, the benchmark cohorts and the trainer:
`phantom.generate_phantom(seed)` builds one scan with its nodules, `synth.write_cohort`
writes a cohort as DICOM series or MetaImage files with ``annotations.csv``.
"""
