"""Running code under numba's CUDA simulator, for the CUDA kernels' tests (a helper, not a test)."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest


def simulated(code: str) -> float:
    """Run ``code`` in a fresh process under numba's CUDA simulator (the variable must be set
    before numba.cuda is imported) -> the float its last line of output prints."""
    try:
        import numba.cuda  # noqa: F401
    except ImportError:
        pytest.skip("numba.cuda not importable")
    env = {**os.environ, "NUMBA_ENABLE_CUDASIM": "1"}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=900)
    assert r.returncode == 0, r.stderr[-2000:]
    return float(r.stdout.strip().splitlines()[-1])
