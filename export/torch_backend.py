"""Compiled-PyTorch backend: AOTInductor packages (``patch.pt2`` / ``dense.pt2``).

It lives beside the exporter that builds those packages, not under engine/, so the engine
stays torch-free: the application (`noduleflow/__init__.py`) registers it with `engine.backends`,
which imports it only when the backend is asked
for by name; ``auto`` never picks it, and it is never on the default path.
"""
from __future__ import annotations

import numpy as np

from noduleflow.engine.backends.base import Backend, graph_channels
from noduleflow.engine.errors import BackendUnavailableError, PackageError
from noduleflow.engine.package import ModelPackage


class TorchCompiledBackend(Backend):
    def __init__(self, package: ModelPackage, graph: str = "patch", device: str | None = None, max_batch: int = 256):
        super().__init__(graph, max_batch, package.contract.patch_size, graph_channels(package, graph))
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
        y = y.float().cpu().numpy()
        return y.reshape(len(batch)) if self.graph != "dense" else y
