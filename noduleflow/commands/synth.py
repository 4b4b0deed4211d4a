"""`noduleflow synth OUT`: write a synthetic chest-CT cohort with LUNA16-style annotations."""
from __future__ import annotations

import argparse


def register(sub) -> None:
    p = sub.add_parser(
        "synth", help="write synthetic chest-CT phantoms (DICOM or MetaImage) with annotations",
        description="Generate a deterministic cohort of synthetic chest CTs (body, bones, airways, "
                    "vessel trees, nodules of 3-30 mm drawn from LUNA16's size distribution) and write "
                    "them with annotations.csv and annotations_excluded.csv in LUNA16's layout. "
                    "Phantoms are a regression signal, not clinical data.")
    p.add_argument("out", help="output folder")
    p.add_argument("--scans", type=int, default=1, help="number of scans (default 1)")
    p.add_argument("--seed", type=int, default=0, help="seed of the first scan; scan i uses seed+i")
    p.add_argument("--format", choices=("dicom", "mhd"), default="dicom", help="output format (default dicom)")
    p.add_argument("--masks", action="store_true", help="also write the true lung masks (masks/*.mhd)")
    p.add_argument("--shape", type=int, nargs=3, metavar=("Z", "Y", "X"),
                   help="voxel grid; default 512x512 in plane and a 250-330 mm scan length")
    p.add_argument("--spacing", type=float, nargs=3, metavar=("DZ", "DY", "DX"),
                   help="voxel size in mm; default drawn per scan (0.6-0.9 in plane, 1-2.5 slices)")
    p.add_argument("--nodules", type=int, help="nodules per scan (default drawn: 0-5)")
    p.add_argument("--kernel", choices=("smooth", "standard", "sharp"), default="standard",
                   help="reconstruction kernel: smooth (soft tissue), standard (default) or sharp (lung/bone: "
                        "enhanced edges, grainy noise at 1.5x); one seed gives the same anatomy under each")
    p.add_argument("--noise", type=float, metavar="HU", help="noise std in HU (default drawn per scan: 15-40)")
    p.add_argument("--preview", action="store_true", help="write a PNG montage per scan under OUT/preview/")
    p.add_argument("--generator", choices=("default", "wide", "heldout"), default="default",
                   help="phantom generator: default (the original, what the shipped model trains on), wide "
                        "(randomised wide, for training) or heldout (its own noise, lesion shapes and anatomy; "
                        "never trained on: an evaluation source); wide and heldout draw their own kernel")
    p.add_argument("--hybrid", nargs="?", const="", metavar="SUBSTRATE",
                   help="instead of phantoms, insert synthetic lesions into a real CT (a DICOM folder or image "
                        "file; default ../shared/realct/LIDC-IDRI-0314) and write .mhd variants with findings.csv "
                        "and source.json; --nodules sets lesions per scan (default 4)")
    p.add_argument("--lung", help="with --hybrid: the lung that receives lesions, left (training) or right "
                                  "(evaluation only; the default)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.hybrid is not None or args.lung is not None:
        return run_hybrid(args)
    from noduleflow.synthetic.phantom import PhantomParams
    from noduleflow.synthetic.synth import write_cohort

    params = PhantomParams(n_nodules=args.nodules, kernel=args.kernel, noise_hu=args.noise)
    paths = write_cohort(args.out, args.scans, args.seed, fmt=args.format, masks=args.masks, params=params,
                         shape_zyx=args.shape, spacing_zyx_mm=args.spacing, preview=args.preview,
                         generator=args.generator)
    print(f"wrote {len(paths)} scan(s) and annotations.csv to {args.out}")
    return 0


def run_hybrid(args: argparse.Namespace) -> int:
    """``--hybrid``: lesions inserted into a real scan (`noduleflow.synthetic.hybrid`)."""
    from noduleflow.engine import ConfigError
    from noduleflow.synthetic.hybrid import DEFAULT_SUBSTRATE, write_hybrids

    if args.hybrid is None:
        raise ConfigError(f"--lung applies to --hybrid only, got --lung {args.lung} without --hybrid")
    phantom_only = {"--shape": args.shape is not None, "--spacing": args.spacing is not None,
                    "--noise": args.noise is not None, "--masks": args.masks, "--format": args.format != "dicom",
                    "--kernel": args.kernel != "standard",
                    "--generator": getattr(args, "generator", "default") != "default"}
    given = [k for k, v in phantom_only.items() if v]
    if given:
        raise ConfigError(f"{', '.join(given)}: phantom options, not for --hybrid (hybrids keep the real scan's grid)")
    substrate = args.hybrid or DEFAULT_SUBSTRATE
    lung = args.lung or "right"
    lesions = 4 if args.nodules is None else args.nodules
    cmd = (f"noduleflow synth {args.out} --hybrid {substrate} --lung {lung} --scans {args.scans} "
           f"--seed {args.seed} --nodules {lesions}" + (" --preview" if args.preview else ""))
    paths = write_hybrids(args.out, args.scans, args.seed, lung=lung, substrate=substrate, lesions_per_scan=lesions,
                          preview=args.preview, command=cmd)
    print(f"wrote {len(paths)} hybrid scan(s) ({lung} lung), annotations.csv, findings.csv, source.json to {args.out}")
    return 0
