"""`noduleflow convert PATH OUT`: write a loaded volume as MetaImage or NIfTI, geometry preserved."""
from __future__ import annotations

import argparse


def register(sub) -> None:
    p = sub.add_parser(
        "convert", help="convert a DICOM series (or any readable volume) to .mhd/.mha/.nii/.nii.gz",
        description="Load PATH exactly as `detect` does (slice order, rescale, geometry) and write it "
                    "to OUT with its spacing, origin and direction.")
    p.add_argument("path", help="DICOM folder or file, .mhd/.mha, .nii/.nii.gz")
    p.add_argument("out", help="output file: .mhd, .mha, .nii or .nii.gz")
    p.add_argument("--series", metavar="UID", help="SeriesInstanceUID to load when PATH holds several")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from noduleflow.engine.io import load_volume, save_volume

    vol = load_volume(args.path, series_uid=args.series)
    out = save_volume(vol, args.out)
    print(f"wrote {out} {vol.shape} int16, series {vol.series_uid}")
    return 0
