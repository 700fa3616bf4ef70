"""Checkpoint reading: the only part of updelta that knows about files.

`open_checkpoint(path)` resolves a Hugging Face folder, a sharded index, a single
`.safetensors` file or a `.bin`/`.pt` state dict into a `Checkpoint` whose tensors
are read block by block (`Checkpoint.read`) without loading the model.
"""
from .checkpoint import Checkpoint, TensorRef, open_checkpoint  # noqa: F401
