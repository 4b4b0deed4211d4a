"""What the benchmarks share: the machine a figure was measured on, phantom scans written as
DICOM series, the JSON + markdown report each command writes, and the standalone entry point
(``python -m noduleflow.bench.X``) built from the same parser as ``noduleflow bench X``.

The standard library and the engine's errors only at import time: the command modules import this
while ``--help`` is built.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
from collections.abc import Callable
from pathlib import Path

from noduleflow.engine.errors import NoduleflowError

# The CPU flags that decide which kernels the runtimes pick (one "AMD EPYC" has AVX2 only, another
# AVX-512 with bfloat16 and VNNI): a figure is read against them.
CPU_FEATURES = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8")


def machine() -> dict:
    """CPU, cores and versions, as far as installed (onnxruntime, openvino, torch: None when not),
    and the GPU PyTorch sees (name, compute capability, memory, CUDA version), or None."""
    import numba
    import numpy as np

    model, flags = None, set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():  # the first processor's lines
            if line.startswith("model name") and model is None:
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    cpu = model or platform.processor() or platform.machine()
    features = [f for f in CPU_FEATURES if f in flags]
    info = {"cpu": f"{cpu} ({', '.join(features)})" if features else cpu, "cpu_model": cpu,
            "cpu_features": features, "cores": os.cpu_count(), "python": platform.python_version(),
            "numpy": np.__version__, "numba": numba.__version__, "gpu": None}
    for mod in ("onnxruntime", "openvino", "torch"):
        info[mod] = __import__(mod).__version__.split("-")[0] if importlib.util.find_spec(mod) else None
    if info["torch"] is not None:
        import torch

        info["torch"] = torch.__version__
        if torch.cuda.is_available():
            p = torch.cuda.get_device_properties(0)
            info.update(gpu=p.name, gpu_capability=f"{p.major}.{p.minor}",
                        gpu_memory_gib=round(p.total_memory / 2 ** 30, 1), cuda=torch.version.cuda)
    return info


def phantom_series(folder: Path, n: int, seed0: int = 500, z_extent_mm: float = 300.0,
                   spacing_zyx_mm=(1.5, 0.7, 0.7), shape_zyx=None) -> list[Path]:
    """``n`` phantom chest CTs (seeds ``seed0``...; by default 300 mm at 1.5 x 0.7 x 0.7 mm, about
    200 x 512 x 512) written as DICOM series ``folder``/s0, s1, ...; their folders."""
    from noduleflow.engine.io.dicom_write import write_dicom_series
    from noduleflow.synthetic.phantom import PhantomParams, generate_phantom

    out = []
    for i in range(n):
        ph = generate_phantom(seed0 + i, params=PhantomParams(z_extent_mm=z_extent_mm),
                              spacing_zyx_mm=tuple(spacing_zyx_mm), shape_zyx=shape_zyx)
        write_dicom_series(ph.volume, folder / f"s{i}", seed=i)
        out.append(folder / f"s{i}")
    return out


def write_report(out: Path, name: str, res: dict, text: str) -> None:
    """``res`` as ``out``/NAME.json and ``text`` as NAME.md (the folder made), the text printed."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(res, indent=2))
    (out / f"{name}.md").write_text(text)
    print(text, end="" if text.endswith("\n") else "\n")


def standalone(build_parser: Callable[[argparse.ArgumentParser], argparse.ArgumentParser], module: str,
               description: str, argv=None) -> int:
    """``python -m noduleflow.bench.<module>``: the parser ``build_parser`` makes for `noduleflow bench`
    (one declaration of the options), run on ``argv``; the command's exit code. An input or
    configuration error exits with status 2 and one line, as `noduleflow` does."""
    parser = build_parser(argparse.ArgumentParser(prog=f"python -m noduleflow.bench.{module}",
                                                  description=description))
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except NoduleflowError as exc:
        parser.exit(2, f"{parser.prog}: error: {exc}\n")
