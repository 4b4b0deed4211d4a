"""`noduleflow warmup`: compile the numba kernels once, so the first real scan runs warm."""
from __future__ import annotations

import argparse
import time


def warm_twice(model=None, shape_zyx=(80, 192, 192), spacing_zyx_mm=(3.0, 1.8, 1.8),
               warm_repeats: int = 1, stages: str = "auto", backend: str = "auto",
               precision: str = "fp32", characterise_top: int = 0) -> tuple[float, float]:
    """Seconds of a first detection and of the best of ``warm_repeats`` later ones (import and
    model load excluded) on a small phantom with two nodules; ``precision``: the scoring network's
    (``detect --precision``). numba compiles the engine's kernels inside the first detection of an
    install (or loads them from its cache). ``characterise_top``: also characterise that many
    findings (`DetectorConfig.characterise_top`), so that those kernels are compiled too."""
    # the CLI imports only the standard library at start-up: the engine when the command runs
    from noduleflow.engine.detector import Detector
    from noduleflow.synthetic.phantom import PhantomParams, generate_phantom

    vol = generate_phantom(1, params=PhantomParams(n_nodules=2), shape_zyx=shape_zyx,
                           spacing_zyx_mm=spacing_zyx_mm).volume
    with Detector(model, backend=backend, stages=stages, backend_options={"precision": precision},
                  characterise_top=characterise_top) as det:
        times = []
        for _ in range(1 + warm_repeats):
            t = time.perf_counter()
            det.detect(vol)
            times.append(time.perf_counter() - t)
    return times[0], min(times[1:])


def register(sub) -> None:
    p = sub.add_parser(
        "warmup", help="compile the engine's kernels once (the first detection after install is then warm)",
        description="Detects on a small synthetic scan twice and reports how long the first run took "
                    "(numba compiling the kernels, or loading them from its cache) and the second (warm). "
                    "numba keeps the compiled kernels in the user's cache folder (~/.cache/noduleflow/numba, "
                    "or $XDG_CACHE_HOME/noduleflow/numba; NUMBA_CACHE_DIR overrides), never inside the "
                    "installed package, so this is paid once per user and install, not once per process.")
    p.add_argument("--model", help="model package folder (default: the shipped model)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    # the findings' characterisation too (the demo's, `--characterise-top`): its own kernels
    first, second = warm_twice(args.model, characterise_top=2)
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
