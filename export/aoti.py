"""Compiled PyTorch packages: ``torch.export`` + AOTInductor (``aoti_compile_and_package``).

A second compiled path beside TensorRT: Inductor generates and fuses the kernels (C++
on the CPU, Triton on CUDA). The ``.pt2`` files load without the trainer's code
(`export.torch_backend`, registered with the engine's backends by the application), so a
machine without TensorRT still runs compiled. `export_package(..., torch_compiled=True)`
compiles them before it writes the manifest; `export_aoti` adds them to an existing package.

Only the patch graph is compiled: with torch 2.13, Inductor fails to lower the dense
graph with dynamic tile sizes (``LoweringException: ValueRangeError: Invalid ranges``),
so the torch-compiled backend runs patch mode only.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from noduleflow.engine.contract import PATCH_SIZE
from noduleflow.engine.package import ModelPackage, write_manifest


def compile_patch(checkpoint, package_dir, device: str = "cpu", max_batch: int = 256) -> tuple[list[Path], dict]:
    """Write ``patch.pt2`` (AOTInductor) into ``package_dir`` -> (paths written, export details
    for the manifest). The manifest is not touched: `export_package` hashes it with the rest."""
    import torch
    from torch.export import Dim

    from noduleflow.trainer.checkpoint import load_checkpoint
    from noduleflow.trainer.models import uses_location

    model, config = load_checkpoint(checkpoint)
    if uses_location(config["model"]):
        raise NotImplementedError("AOTInductor export of 3D-LOC is not implemented")
    model = model.to(device).eval()
    out = Path(package_dir)
    batch = Dim("batch", min=1, max=max_batch)
    p = PATCH_SIZE
    ep = torch.export.export(model, (torch.rand(2, 1, p, p, p, device=device),), dynamic_shapes=({0: batch},))
    path = Path(torch._inductor.aoti_compile_and_package(ep, package_path=str(out / "patch.pt2")))
    return [path], {"aoti_device": device, "torch": torch.__version__}


def export_aoti(checkpoint, package_dir, device: str = "cpu", max_batch: int = 256) -> list[Path]:
    """Add ``patch.pt2`` to an existing package and re-hash its manifest."""
    written, info = compile_patch(checkpoint, package_dir, device, max_batch)
    m = ModelPackage.load(package_dir).manifest
    write_manifest(package_dir, replace(m, export={**m.export, **info}))
    return written
