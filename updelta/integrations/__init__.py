"""Measuring the update while a model trains, in-process (docs/integrations.md).

- `integrations.memory`: in-memory tensors -> the engine's per-tensor records (the kernels of `updelta diff`);
- `integrations.tracker`: the starting weights of a model and the measurement of its update against them,
  framework-neutral (used by `updelta train --track-every`);
- `integrations.transformers`: `track(trainer, ...)`, a `transformers.TrainerCallback` that logs `updelta/*`
  values through `trainer.log` (imports transformers).
"""
