"""TRL's SFTTrainer with the DFT loss, tracked: log_history at step N == `updelta diff` of checkpoint-N."""
from __future__ import annotations

import math

import pytest
import torch

import updelta

trl = pytest.importorskip("trl")


def test_sft_trainer_dft_loss(tmp_path):
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from updelta.integrations.transformers import track
    from updelta.train.model import default_base_path

    base = default_base_path()
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(base)
    ds = Dataset.from_dict({"prompt": ["12+3=", "7+8=", "2+2=", "9+1="] * 2, "completion": ["15", "15", "4", "10"] * 2})
    args = SFTConfig(output_dir=str(tmp_path / "out"), loss_type="dft", max_steps=2, per_device_train_batch_size=4,
                     learning_rate=1e-3, save_steps=2, save_only_model=True, report_to=[], use_cpu=True,
                     disable_tqdm=True, logging_steps=1, max_length=32)
    trainer = SFTTrainer(model=model, args=args, train_dataset=ds, processing_class=tok)
    track(trainer, every_n_steps=2)
    trainer.train()
    (entry,) = [h for h in trainer.state.log_history if "updelta/rel_delta" in h]
    assert entry["step"] == 2
    r = updelta.diff(base, tmp_path / "out" / "checkpoint-2", spectral="off", progress=False)
    for k in ("rel_delta", "delta_fro", "cos_delta_base", "sparsity_exact", "sparsity_atol", "sparsity_rtol"):
        assert math.isclose(entry[f"updelta/{k}"], r.summary[k].iloc[0], rel_tol=1e-6), k
    assert entry["updelta/rel_delta"] > 0
