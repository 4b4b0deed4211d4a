"""Compiled PyTorch packages: ``torch.export`` + AOTInductor (``aoti_compile_and_package``).

A second compiled path beside TensorRT: Inductor generates and fuses the kernels (C++
on the CPU, Triton on CUDA). The ``.pt2`` files load without the trainer's code
(`export.torch_backend`, registered with the engine's backends by the application), so a
machine without TensorRT still runs compiled. `export_package(..., torch_compiled=True)`
compiles them before it writes the manifest; `export_aoti` adds them to an existing package.

What is compiled: the patch graph (``patch.pt2``) and, for a two-stage package, the stage-2
network (``stage2.pt2``, the default detection's network). For the device the export runs on:
CUDA when PyTorch sees a GPU (``device="auto"``), else the CPU; the manifest records it
(``export.aoti_device``) and the backend runs the graphs there. The dense graph is not
compiled: with torch 2.13, Inductor fails to lower it with dynamic tile sizes
(``LoweringException: ValueRangeError: Invalid ranges``).
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from noduleflow.engine.contract import PATCH_SIZE
from noduleflow.engine.errors import ConfigError
from noduleflow.engine.package import ModelPackage, write_manifest


def aoti_device(device: str = "auto") -> str:
    """"auto": "cuda" when PyTorch sees a GPU, else "cpu"; "cpu" or "cuda" as given."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device not in ("cpu", "cuda"):
        raise ConfigError(f"AOTInductor device must be auto, cpu or cuda, got {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("AOTInductor device cuda asked for, but PyTorch sees no GPU here")
    return device


def compile_graph(model, out_path: Path, channels: int = 1, device: str = "auto", max_batch: int = 256,
                  patch: int = PATCH_SIZE) -> Path:
    """``model`` ((N, channels, patch^3) -> logits) exported with a dynamic batch (1..``max_batch``)
    and compiled by AOTInductor into ``out_path`` for ``device``."""
    import torch
    from torch.export import Dim

    device = aoti_device(device)
    model = model.to(device).eval()
    batch = Dim("batch", min=1, max=max_batch)
    example = torch.rand(2, channels, patch, patch, patch, device=device)
    ep = torch.export.export(model, (example,), dynamic_shapes=({0: batch},))
    return Path(torch._inductor.aoti_compile_and_package(ep, package_path=str(out_path)))


def compile_patch(checkpoint, package_dir, device: str = "auto", max_batch: int = 256) -> tuple[list[Path], dict]:
    """Write ``patch.pt2`` (AOTInductor) into ``package_dir`` -> (paths written, export details
    for the manifest). The manifest is not touched: `export_package` hashes it with the rest."""
    import torch

    from noduleflow.trainer.checkpoint import load_checkpoint
    from noduleflow.trainer.models import uses_location

    model, config = load_checkpoint(checkpoint)
    if uses_location(config["model"]):
        raise NotImplementedError("AOTInductor export of 3D-LOC is not implemented")
    device = aoti_device(device)
    path = compile_graph(model, Path(package_dir) / "patch.pt2", 1, device, max_batch)
    return [path], {"aoti_device": device, "torch": torch.__version__}


def compile_stage2(model, package_dir, channels: int, device: str = "auto", max_batch: int = 256) -> Path:
    """Write ``stage2.pt2`` from a loaded stage-2 network (``channels`` context scales)."""
    return compile_graph(model, Path(package_dir) / "stage2.pt2", channels, device, max_batch)


def export_aoti(checkpoint, package_dir, device: str = "auto", max_batch: int = 256,
                stage2_checkpoint=None) -> list[Path]:
    """Add ``patch.pt2`` (and, given the package's stage-2 checkpoint, ``stage2.pt2``) to an
    existing package and re-hash its manifest."""
    written, info = compile_patch(checkpoint, package_dir, device, max_batch)
    m = ModelPackage.load(package_dir).manifest
    if stage2_checkpoint is not None:
        from noduleflow.trainer.checkpoint import load_checkpoint

        if m.contract.stage2 is None:
            raise ConfigError(f"package {m.model_id} has no stage 2 to compile")
        model, _ = load_checkpoint(stage2_checkpoint)
        written.append(compile_stage2(model, package_dir, m.contract.stage2.channels, info["aoti_device"], max_batch))
    write_manifest(package_dir, replace(m, export={**m.export, **info}))
    return written
