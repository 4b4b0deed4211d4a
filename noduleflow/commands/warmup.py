"""`noduleflow warmup`: compile the numba kernels once, so the first real scan runs warm."""
from __future__ import annotations

import argparse


def register(sub) -> None:
    p = sub.add_parser(
        "warmup", help="compile the engine's kernels once (the first detection after install is then warm)",
        description="Detects on a small synthetic scan twice and reports how long the first run took "
                    "(numba compiling the kernels, or loading them from its cache) and the second (warm). "
                    "numba keeps the compiled kernels in its cache (beside the installed package, or in "
                    "the user's cache folder when that is read-only; NUMBA_CACHE_DIR overrides), so this is "
                    "paid once per install, not once per process.")
    p.add_argument("--model", help="model package folder (default: the shipped model)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from noduleflow.bench.cold_start import warm_twice

    first, second = warm_twice(args.model)
    print(f"first detection {first:.2f} s (compiling or loading the kernels), then {second:.2f} s warm")
    # a scan finer than 2 mm in plane takes the lung mask's block-grid path (other kernels)
    first, second = warm_twice(args.model, shape_zyx=(48, 320, 320), spacing_zyx_mm=(3.0, 0.8, 0.8))
    print(f"a scan finer than 2 mm in plane (the lung mask's block grid): first {first:.2f} s, "
          f"then {second:.2f} s warm")
    from noduleflow.engine.package import ModelPackage, default_package_path

    if ModelPackage.load(args.model or default_package_path(), verify_hashes=False).has_stage2:
        # the default detection of a two-stage model may not run the dense CNN's own kernels
        first, second = warm_twice(args.model, stages="1")
        print(f"stage 1 alone (--stages 1): first {first:.2f} s, then {second:.2f} s warm")
    return 0
