"""Compiled PyTorch packages: ``torch.export`` + AOTInductor (``aoti_compile_and_package``).

A second compiled path beside TensorRT: Inductor generates and fuses the kernels (C++
on the CPU, Triton on CUDA). The ``.pt2`` files load without the trainer's code
(`export.torch_backend`, opened by `engine.backends.open_backend`), so a machine without
TensorRT still runs compiled.
The package's manifest is rewritten to hash the new files.

Only the patch graph is compiled: with torch 2.13, Inductor fails to lower the dense
graph with dynamic tile sizes (``LoweringException: ValueRangeError: Invalid ranges``),
so the torch-compiled backend runs patch mode only.
"""
from __future__ import annotations

import json
from pathlib import Path

from noduleflow.engine.package import ModelPackage, write_manifest


def export_aoti(checkpoint, package_dir, device: str = "cpu", max_batch: int = 256) -> list[Path]:
    import torch
    from torch.export import Dim

    from noduleflow.trainer.checkpoint import load_checkpoint
    from noduleflow.trainer.models import uses_location

    model, config = load_checkpoint(checkpoint)
    if uses_location(config["model"]):
        raise NotImplementedError("AOTInductor export of 3D-LOC is not implemented")
    model = model.to(device).eval()
    out = Path(package_dir)
    written = []
    batch = Dim("batch", min=1, max=max_batch)
    ep = torch.export.export(model, (torch.rand(2, 1, 41, 41, 41, device=device),), dynamic_shapes=({0: batch},))
    written.append(Path(torch._inductor.aoti_compile_and_package(ep, package_path=str(out / "patch.pt2"))))
    m = ModelPackage.load(out).manifest
    fields = {k: v for k, v in json.loads(m.to_json()).items() if k != "files"}
    fields["export"] = {**fields.get("export", {}), "aoti_device": device, "torch": torch.__version__}
    write_manifest(out, **fields)
    return written
