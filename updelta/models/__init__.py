"""Real models that updelta can fetch and convert for tests and examples (model *providers*).

Each provider is one module that owns its download, conversion and cache folder:

- `updelta.models.smollm2`: SmolLM2-135M-Instruct as a bf16 Hugging Face folder (`smollm2_path()`,
  CLI `updelta base smollm2`).
"""
