"""`noduleflow bench ...`: one module per benchmark, each with ``register(subparsers)`` and a
``build_parser`` that declares its options once, for ``noduleflow bench X`` and for
``python -m noduleflow.bench.X`` alike (`common.standalone`)."""
from __future__ import annotations

import importlib

# Order is the order in `noduleflow bench --help`.
BENCH_MODULES: list[str] = [
    "noduleflow.bench.froc",
    "noduleflow.bench.accuracy",
    "noduleflow.bench.preprocess",
    "noduleflow.bench.load",
    "noduleflow.bench.speed",
    "noduleflow.bench.memory",
    "noduleflow.bench.cold_start",
    "noduleflow.bench.ort_settings",
    "noduleflow.bench.serve_load",
    "noduleflow.bench.gpu",
    "noduleflow.bench.characterise",
    "noduleflow.bench.follow",
    "noduleflow.bench.batch",
    "noduleflow.bench.models",
]


def register(sub) -> None:
    p = sub.add_parser("bench", help="accuracy (LUNA16 FROC/CPM) and throughput benchmarks",
                       description="Benchmarks: accuracy with the LUNA16 protocol, and speed of "
                                   "the preprocessing kernels and the whole pipeline.")
    bsub = p.add_subparsers(dest="bench_command", metavar="BENCH")
    for name in BENCH_MODULES:
        importlib.import_module(name).register(bsub)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])
