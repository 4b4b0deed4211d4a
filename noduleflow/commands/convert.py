"""`noduleflow convert PATH OUT`: write a loaded volume as MetaImage or NIfTI, geometry preserved."""
from __future__ import annotations

import argparse


def register(sub) -> None:
    p = sub.add_parser(
        "convert", help="convert a DICOM series (or any readable volume) to .mhd/.mha/.nii/.nii.gz",
        description="Load PATH exactly as `detect` does (slice order, rescale, geometry) and write it "
                    "to OUT with its spacing, origin and direction. OUT's folder is checked before "
                    "loading (created 0700 when missing); the file(s) are written whole or not at all, "
                    "readable by their owner only (0600): they hold a patient's scan.")
    p.add_argument("path", help="DICOM folder or file, .mhd/.mha, .nii/.nii.gz")
    p.add_argument("out", help="output file: .mhd, .mha, .nii or .nii.gz")
    p.add_argument("--series", metavar="UID", help="SeriesInstanceUID to load when PATH holds several")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from noduleflow.engine.errors import ConfigError, NoduleflowError
    from noduleflow.engine.fileio import atomic_files
    from noduleflow.engine.io import load_volume, save_volume
    from noduleflow.engine.package import printable
    from noduleflow.engine.results import FILE_MODE, ResultFolder, make_private_folder

    out = Path(args.out)
    if out.is_dir():
        raise ConfigError(f"output {printable(out)} is a folder; name the file to write (.mhd, .mha, .nii, .nii.gz)")
    # the folder first: checked, and locked against another writer, before the (long) load
    with ResultFolder(make_private_folder(out.parent)):
        vol = load_volume(args.path, series_uid=args.series)
        try:
            # SimpleITK writes OUT (and a MetaImage's data file) under their own names into a private
            # temporary folder; they are renamed into place once both are whole
            with atomic_files(out.parent, mode=FILE_MODE, last=out.name) as tmp:
                save_volume(vol, tmp / out.name)
        except (OSError, RuntimeError) as exc:   # SimpleITK raises RuntimeError for its I/O errors
            reason = getattr(exc, "strerror", None) or str(exc).strip().splitlines()[-1][:200]
            raise NoduleflowError(f"cannot write {printable(out)}: {printable(reason)}; nothing was written") from None
    print(f"wrote {printable(out)} {vol.shape} int16, series {printable(vol.series_uid)}")
    return 0
