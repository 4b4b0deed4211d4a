"""Command-line options generated from the settings' frozen dataclasses.

Each field marked for the CLI (metadata ``cli``) becomes ``--field-name`` (or metadata
``flag``) with the field's type, default and help text (metadata ``help``): the detection
options of ``detect``, ``demo`` and ``serve`` from `DetectorConfig`, the service's own from
`ServeConfig`. So the commands, the Python API and the docs cannot drift apart. Building the
options imports only those dataclasses' modules and the backend table (no numba, no
onnxruntime, no torch).
"""
from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from pathlib import Path

# metavars of the float options by the unit their name ends in (others are probabilities)
_UNIT_METAVARS = {"_mm": "MM", "_s": "S", "_mb": "MB"}


def _choices(name: str):
    from noduleflow.engine.config import CLUSTERINGS, MODES, STAGES

    return {"mode": MODES, "clustering": CLUSTERINGS, "stages": STAGES}.get(name)


def add_model_options(parser: argparse.ArgumentParser) -> None:
    """--model and --backend (the backend names come from the engine's registry)."""
    from noduleflow.engine.backends import backend_names, precision_names

    parser.add_argument("--model", help="model package folder (default: the shipped phantom-trained model)")
    parser.add_argument("--backend", default="auto", choices=backend_names(), metavar="NAME",
                        help=f"inference backend: {', '.join(backend_names())} (default auto: the fastest "
                             "one installed, named in the output)")
    parser.add_argument("--precision", default=None, choices=precision_names(),
                        help="the scoring network's arithmetic (default: the backend's own, fp32 on the CPU backends, "
                             "whose scores are then the same on each; TensorRT's fp16 plans). int8 runs "
                             "the package's stage2_int8.onnx (noduleflow export --int8; the shipped model has one) "
                             "on openvino-cpu or onnxruntime-cpu (faster on openvino-cpu); bf16 runs the fp32 "
                             "graphs in bfloat16 on openvino-cpu where the CPU has it (AVX512_BF16 or AMX); fp16 "
                             "runs *_fp16.onnx on ONNX Runtime")


def backend_options(args: argparse.Namespace) -> dict:
    """The backend options the parsed --precision asks for (none without one: each backend's default)."""
    p = getattr(args, "precision", None)
    return {} if p is None else {"precision": p}


def add_config_options(parser, cls, groups: dict | None = None, choices=None, defaults: dict | None = None) -> None:
    """One option per CLI field of the frozen dataclass ``cls``, in the argument group its metadata
    ``group`` names (``groups``: name -> group; default ``parser``). bool fields become
    ``--name/--no-name``; ``tuple[str, ...]`` fields a repeatable option; a field without a
    default a required one. ``choices(name)``: the allowed values of a field, or None. Every
    option's help ends with its default; ``defaults``: field name -> this command's own default."""
    hints = typing.get_type_hints(cls)
    own = defaults or {}
    for f in dataclasses.fields(cls):
        if not f.metadata.get("cli"):
            continue
        target = (groups or {}).get(f.metadata.get("group"), parser)
        flag = f.metadata.get("flag") or "--" + f.name.replace("_", "-")
        kind = _unwrap_optional(hints[f.name])
        text = f.metadata["help"]
        if kind is bool:
            shown = flag if f.default else "--no-" + flag[2:]
            target.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=f.default,
                                help=f"{text} (default {shown})")
            continue
        if typing.get_origin(kind) is tuple:   # tuple[str, ...]: repeatable; None when not given
            target.add_argument(flag, dest=f.name, action="append", type=typing.get_args(kind)[0],
                                metavar=f.metadata.get("metavar"), help=text)
            continue
        allowed = choices(f.name) if choices else None
        default = own.get(f.name, f.default)
        required = default is dataclasses.MISSING
        target.add_argument(flag, dest=f.name, type=kind, default=None if required else default,
                            required=required, choices=allowed, metavar=_metavar(f, kind, allowed),
                            help=text if required or default is None else f"{text} (default {default})")


def config_values(cls, args: argparse.Namespace) -> dict:
    """The parsed values of ``cls``'s CLI fields (`add_config_options`), ready for ``cls(**values)``;
    a repeatable option not given has the field's default."""
    values = {}
    for f in dataclasses.fields(cls):
        if not f.metadata.get("cli"):
            continue
        v = getattr(args, f.name)
        if isinstance(v, list):
            v = tuple(v)
        elif v is None and f.default is not dataclasses.MISSING:
            v = f.default
        values[f.name] = v
    return values


def _unwrap_optional(kind):
    """``X | None`` -> X."""
    if typing.get_origin(kind) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(kind) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return kind


def _metavar(f: dataclasses.Field, kind, allowed) -> str | None:
    if "metavar" in f.metadata or allowed:
        return f.metadata.get("metavar")
    if kind is int:
        return "N"
    if kind is float:
        return next((m for unit, m in _UNIT_METAVARS.items() if f.name.endswith(unit)), "P")
    return "DIR" if kind is Path else None


def add_detector_options(parser: argparse.ArgumentParser, title: str = "detection settings",
                         defaults: dict | None = None) -> None:
    """One option per CLI field of `DetectorConfig`: ``--top-k``, ``--mode``, ``--no-refine``...
    ``defaults``: this command's own defaults of some fields (name -> value)."""
    from noduleflow.engine.config import DetectorConfig

    add_config_options(parser.add_argument_group(title), DetectorConfig, choices=_choices, defaults=defaults)


def detector_config(args: argparse.Namespace):
    """The `DetectorConfig` the parsed options describe."""
    from noduleflow.engine.config import DetectorConfig

    return DetectorConfig().replace(**config_values(DetectorConfig, args))
