"""`noduleflow inspect PATH`: what series are there, and what the chosen volume looks like."""
from __future__ import annotations

import argparse


def register(sub) -> None:
    p = sub.add_parser(
        "inspect", help="show the series in a DICOM folder / image file and the chosen volume's geometry",
        description="Scan PATH (DICOM folder tree, DICOM file, .mhd/.mha, .nii/.nii.gz), choose the "
                    "series as `detect` would, and print its shape, spacing, origin, direction, series "
                    "UID and HU statistics.")
    p.add_argument("path", help="DICOM folder or file, .mhd/.mha, .nii/.nii.gz")
    p.add_argument("--series", metavar="UID", help="SeriesInstanceUID to load when PATH holds several")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import json

    from noduleflow.engine.io import load_volume
    from noduleflow.engine.package import printable

    vol = load_volume(args.path, series_uid=args.series)
    info = vol.describe()
    info["source"] = str(args.path)
    info["warnings"] = vol.meta.get("warnings", [])
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    fmt = lambda xs: "(" + ", ".join(f"{x:.4g}" for x in xs) + ")"  # noqa: E731
    # values from the file are printed through `printable`: a UID must not drive the terminal
    print(f"series_uid      {printable(info['series_uid'])}")
    print(f"shape (z,y,x)   {tuple(info['shape_zyx'])}")
    print(f"spacing (z,y,x) {fmt(info['spacing_zyx_mm'])} mm")
    print(f"origin (x,y,z)  {fmt(info['origin_xyz_mm'])} mm")
    print(f"direction       {fmt(info['direction'])}")
    print(f"HU min/mean/max {info['hu_min']:.0f} / {info['hu_mean']:.1f} / {info['hu_max']:.0f}")
    for w in info["warnings"]:
        print(f"warning         {printable(w)}")
    return 0
