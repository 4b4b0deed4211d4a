"""The ``noduleflow`` command: one argparse program, one module per subcommand.

Each subcommand module exposes ``register(subparsers)`` which adds its parser and
sets ``func`` (a callable taking the parsed args and returning an exit code).
Command modules import only the standard library at import time and do their heavy
imports inside ``func``: building ``--help`` must not load torch, onnxruntime or
numba. The trainer, exporter and benchmarks contribute their own subcommands
(listed below by module name); the runtime (``noduleflow.engine``) contributes none.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import sys

from .engine.errors import NoduleflowError

# Order is the order in `noduleflow --help`.
COMMAND_MODULES: list[str] = [
    "noduleflow.commands.inspect",
    "noduleflow.commands.convert",
    "noduleflow.commands.detect",
    "noduleflow.commands.follow",
    "noduleflow.commands.batch",
    "noduleflow.commands.demo",
    "noduleflow.commands.serve",
    "noduleflow.commands.warmup",
    "noduleflow.commands.synth",
    "noduleflow.trainer.commands.train",
    "noduleflow.export.cli",
    "noduleflow.bench.cli",
]

log = logging.getLogger("noduleflow")


def build_parser() -> argparse.ArgumentParser:
    from .engine import __version__

    parser = argparse.ArgumentParser(
        prog="noduleflow",
        description=(
            "Lung-nodule detection in chest CT: a lean ONNX/TensorRT inference engine, "
            "with the trainer, exporter and benchmarks that feed it."
        ),
    )
    parser.add_argument("--version", action="version", version=f"noduleflow {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except NoduleflowError as exc:
        # Input and configuration errors: one line, no traceback.
        print(f"noduleflow {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
