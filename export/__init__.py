"""noduleflow export: PyTorch checkpoints -> ONNX / TensorRT / AOTInductor model packages."""
