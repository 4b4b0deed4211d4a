"""Compiled-PyTorch backend: AOTInductor packages (``patch.pt2`` / ``dense.pt2``).

The one place under engine/ where torch may be imported, lazily, and only when this
backend is asked for by name; ``auto`` never picks it on a CPU machine (ONNX Runtime is
the CPU backend), and it is never on the default path.
"""
from __future__ import annotations

import numpy as np

from ..errors import BackendUnavailableError, PackageError
from ..package import ModelPackage
from .base import Backend


class TorchCompiledBackend(Backend):
    def __init__(self, package: ModelPackage, graph: str = "patch", device: str | None = None, max_batch: int = 256):
        super().__init__(graph, max_batch)
        try:
            import torch
        except ImportError as exc:
            raise BackendUnavailableError("the torch-compiled backend needs PyTorch: pip install torch") from exc
        path = package.file(f"{graph}.pt2")
        if path is None:
            raise PackageError(f"package {package.manifest.model_id} has no {graph}.pt2: export it with "
                               f"`noduleflow export --torch-compiled`")
        self._torch = torch
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self._model = torch._inductor.aoti_load_package(str(path))
        self.name = f"torch-compiled-{self.device}"

    def _infer(self, batch, extra):
        torch = self._torch
        if extra is not None:
            raise BackendUnavailableError("the torch-compiled backend does not run 3D-LOC packages")
        x = torch.from_numpy(np.ascontiguousarray(batch)).to(self.device)
        with torch.no_grad():
            y = self._model(x)
        return y.float().cpu().numpy()
