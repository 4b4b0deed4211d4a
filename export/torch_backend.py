"""Compiled-PyTorch backend: AOTInductor packages (``patch.pt2`` / ``stage2.pt2``).

It lives beside the exporter that builds those packages, not under engine/, so the engine
stays torch-free: the application (`noduleflow/__init__.py`) registers it with `engine.backends`,
which imports it only when the backend is asked
for by name; ``auto`` never picks it, and it is never on the default path.

The graphs run on the device they were compiled for (the manifest's ``export.aoti_device``:
CUDA when the export saw a GPU). On CUDA, a batch that already lives on the GPU (an object with
``__cuda_array_interface__``, e.g. the numba-cuda gathers of `engine.patches_cuda`) is wrapped
as a tensor without a copy; host batches are copied up, and only the logits come back.
"""
from __future__ import annotations

import numpy as np

from noduleflow.engine.backends.base import Backend, graph_channels
from noduleflow.engine.errors import BackendUnavailableError, PackageError
from noduleflow.engine.package import ModelPackage


class TorchCompiledBackend(Backend):
    def __init__(self, package: ModelPackage, graph: str = "patch", device: str | None = None, max_batch: int = 256,
                 precision: str = "fp32"):
        super().__init__(graph, max_batch, package.contract.patch_size, graph_channels(package, graph))
        if precision != "fp32":  # the AOTInductor packages are compiled from the fp32 network
            raise BackendUnavailableError(f"the torch-compiled backend runs fp32 only, not {precision!r}")
        try:
            import torch
        except ImportError as exc:
            raise BackendUnavailableError("the torch-compiled backend needs PyTorch: pip install torch") from exc
        path = package.file(f"{graph}.pt2")
        if path is None:
            what = "--torch-compiled --stage2 ..." if graph == "stage2" else "--torch-compiled"
            raise PackageError(f"package {package.manifest.model_id} has no {graph}.pt2: export it with "
                               f"`noduleflow export {what}`")
        built = package.manifest.export.get("aoti_device", "cpu")
        if device is not None and device != built:
            raise BackendUnavailableError(f"{graph}.pt2 of {package.manifest.model_id} was compiled for {built}, "
                                          f"not {device}: export it again on the device it is to run on")
        if built == "cuda" and not torch.cuda.is_available():
            raise BackendUnavailableError(f"{graph}.pt2 of {package.manifest.model_id} was compiled for CUDA and "
                                          "PyTorch sees no GPU here")
        self._torch = torch
        self.device = built
        self._model = torch._inductor.aoti_load_package(str(path))
        self.name = f"torch-compiled-{self.device}"
        # on CUDA the detector gathers stage 2's context patches on the GPU for it
        self.accepts_device_arrays = self.device == "cuda"

    def _tensor(self, batch):
        torch = self._torch
        if hasattr(batch, "__cuda_array_interface__") and self.device == "cuda":
            return torch.as_tensor(batch, device="cuda")  # the same memory, no copy
        if hasattr(batch, "copy_to_host"):  # a device array for a CPU-compiled graph (or numba's simulator)
            batch = batch.copy_to_host()
        return torch.from_numpy(np.ascontiguousarray(batch)).to(self.device)

    def _infer(self, batch, extra):
        torch = self._torch
        if extra is not None:
            raise BackendUnavailableError("the torch-compiled backend does not run 3D-LOC packages")
        with torch.no_grad():
            y = self._model(self._tensor(batch))
        y = y.float().cpu().numpy()
        return y.reshape(len(batch)) if self.graph != "dense" else y
