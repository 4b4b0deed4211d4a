"""The backend table: one entry per backend, every other list derived from it, modules lazy."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from noduleflow.engine import backends
from noduleflow.engine.backends import AUTO_ORDER, BACKENDS, BUILTIN, backend_info, backend_names, precision_names
from noduleflow.engine.errors import BackendUnavailableError, ConfigError


def _run(code: str) -> str:
    return subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout


def test_every_list_comes_from_the_table():
    names = tuple(b.name for b in BACKENDS)
    assert len(set(names)) == len(names)
    assert BUILTIN == ("auto", *names) and backend_names()[: len(BUILTIN)] == BUILTIN
    assert AUTO_ORDER == ("tensorrt", "onnxruntime-cuda", "openvino-cpu", "onnxruntime-cpu")
    assert backends.cpu_backend_names()[:2] == ("openvino-cpu", "onnxruntime-cpu")
    assert set(precision_names()) == {p for b in backends.backends() for p in b.precisions}
    assert {"fp32", "fp16", "bf16", "int8"} <= set(precision_names())
    assert all(b.device in ("cpu", "cuda") and b.precisions and b.install for b in BACKENDS)


def test_the_backend_modules_take_their_precisions_from_the_table():
    from noduleflow.engine.backends import openvino, tensorrt

    assert openvino.PRECISIONS == backend_info("openvino-cpu").precisions
    assert tensorrt.PRECISIONS == backend_info("tensorrt").precisions


def test_unknown_names_and_missing_packages_are_errors(monkeypatch):
    with pytest.raises(ConfigError, match="unknown backend 'magic'; choose one of auto, tensorrt"):
        backend_info("magic")
    monkeypatch.setattr(backends, "BACKENDS", tuple(
        b if b.name != "openvino-cpu" else backends.BackendInfo(**{**b.__dict__, "requires": "no_such_module_x"})
        for b in BACKENDS))
    with pytest.raises(BackendUnavailableError, match="needs no_such_module_x: pip install 'noduleflow.openvino.'"):
        backends.open_backend(None, "openvino-cpu")   # refused before the package is read


def test_a_registered_backend_joins_every_list_but_auto():
    out = _run("import json\n"
               "from noduleflow.engine.backends import *\n"
               "register_backend('x-cpu', 'm', 'C', requires='json', install='pip install x', device='cpu',\n"
               "                 precisions=('fp32', 'q4'))\n"
               "try:\n"
               "    register_backend('tensorrt', 'm', 'C', 'json', 'x')\n"
               "    refused = False\n"
               "except Exception as exc:\n"
               "    refused = 'built in' in str(exc)\n"
               "print(json.dumps([backend_names(), cpu_backend_names(), precision_names(), AUTO_ORDER, refused]))")
    names, cpu, precisions, auto, refused = json.loads(out)
    assert names[-1] == "x-cpu" and cpu[-1] == "x-cpu" and "q4" in precisions and "x-cpu" not in auto
    assert refused


def test_importing_the_table_imports_no_backend():
    out = _run("import sys, json, noduleflow, noduleflow.engine.backends as b; b.backend_names()\n"
               "print(json.dumps(sorted(m for m in sys.modules if m.startswith('noduleflow.engine.backends.')\n"
               "                        or m.split('.')[0] in ('onnxruntime', 'openvino', 'tensorrt', 'torch'))))")
    assert json.loads(out) == []
