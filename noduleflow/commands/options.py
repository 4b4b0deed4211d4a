"""The detection options of ``detect``, ``demo`` and ``serve``, derived from `DetectorConfig`.

Each `DetectorConfig` field marked for the CLI becomes ``--field-name`` with the field's type,
default and help text, so the three commands, the Python API and the docs cannot drift apart.
Building the options imports only `noduleflow.engine.config` (plain dataclasses: no numba, no
onnxruntime, no torch).
"""
from __future__ import annotations

import argparse
import dataclasses
import typing


def _choices(name: str):
    from noduleflow.engine.config import CLUSTERINGS, MODES, STAGES

    return {"mode": MODES, "clustering": CLUSTERINGS, "stages": STAGES}.get(name)


def add_model_options(parser: argparse.ArgumentParser) -> None:
    """--model and --backend (the backend names come from the engine's registry)."""
    from noduleflow.engine.backends import backend_names

    parser.add_argument("--model", help="model package folder (default: the shipped phantom-trained model)")
    parser.add_argument("--backend", default="auto", choices=backend_names(), metavar="NAME",
                        help=f"inference backend: {', '.join(backend_names())} (default auto: the fastest "
                             "one installed, named in the output)")
    parser.add_argument("--precision", default=None, choices=("fp32", "fp16", "bf16", "int8"),
                        help="the scoring network's arithmetic (default: the backend's own, fp32 on the CPU backends, "
                             "whose scores are then the same on each; TensorRT's fp16 plans). int8 runs "
                             "the package's stage2_int8.onnx (noduleflow export --int8; the shipped model has one) "
                             "on openvino-cpu or onnxruntime-cpu: faster on openvino-cpu, its held-out accuracy in "
                             "bench/results/int8_stage2_openvino; bf16 runs the fp32 graphs in bfloat16 on "
                             "openvino-cpu where the CPU has it (AVX512_BF16 or AMX), its held-out accuracy in "
                             "bench/results/bf16_openvino; fp16 runs *_fp16.onnx on ONNX Runtime")


def backend_options(args: argparse.Namespace) -> dict:
    """The backend options the parsed --precision asks for (none without one: each backend's default)."""
    p = getattr(args, "precision", None)
    return {} if p is None else {"precision": p}


def add_detector_options(parser: argparse.ArgumentParser, title: str = "detection settings") -> None:
    """One option per CLI field of `DetectorConfig`: ``--top-k``, ``--mode``, ``--no-refine``..."""
    from noduleflow.engine.config import DetectorConfig

    group = parser.add_argument_group(title)
    hints = typing.get_type_hints(DetectorConfig)
    for f in dataclasses.fields(DetectorConfig):
        if not f.metadata.get("cli"):
            continue
        flag = "--" + f.name.replace("_", "-")
        kind = hints[f.name]
        if kind is bool:
            group.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=f.default,
                               help=f.metadata["help"])
            continue
        choices = _choices(f.name)
        metavar = None if choices else "N" if kind is int else "MM" if f.name.endswith("_mm") else "P"
        group.add_argument(flag, dest=f.name, type=kind, default=f.default, choices=choices, metavar=metavar,
                           help=f"{f.metadata['help']} (default {f.default})")


def detector_config(args: argparse.Namespace):
    """The `DetectorConfig` the parsed options describe."""
    from noduleflow.engine.config import DetectorConfig

    return DetectorConfig().replace(**{f.name: getattr(args, f.name) for f in dataclasses.fields(DetectorConfig)
                                       if f.metadata.get("cli")})
