"""Checkpoint reading: the only part of updelta that knows about files.

- `open_checkpoint(path)` resolves a path (`formats.RESOLVERS`: Hugging Face folders, sharded indexes, single
  `.safetensors` / `.bin` / `.pt` files) into a `Checkpoint` whose tensors are read block by block without
  loading the model; every header and index is validated first (`safetensors_header`, `jsonfiles`); FP8
  weights are de-quantized and other quantized layouts refused by name (`quantized`, docs/quantized.md).
- `open_factored(path)` reads an update given as factors (a PEFT LoRA adapter) without densifying it.
"""
from updelta.io.checkpoint import Checkpoint, TensorRef  # noqa: F401
from updelta.io.factored import FactoredSource, FactoredUpdate, open_factored  # noqa: F401
from updelta.io.formats import FILE_READERS, RESOLVERS, Layout, TensorFile, is_adapter, resolve  # noqa: F401
from updelta.io.opener import open_checkpoint  # noqa: F401
