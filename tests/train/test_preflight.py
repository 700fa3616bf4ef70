"""A run that could not write its result fails before training; a failed or interrupted run leaves no partial
run folder (an interrupted one keeps its finished checkpoints in NAME.interrupted/)."""
import json

import pytest
from transformers import AutoModelForCausalLM

from updelta.train import SFTOptions, default_base_path, run_method
from updelta.train import runs as runs_mod
from updelta.train.options import OptionsError


def _steps_taken(monkeypatch):
    calls = []
    real = runs_mod.RunWriter.step

    def step(self, s, record):
        calls.append(s)
        real(self, s, record)
    monkeypatch.setattr(runs_mod.RunWriter, "step", step)
    return calls


def test_quantization_marker_fails_before_any_step(tmp_path, monkeypatch):
    base = tmp_path / "qbase"
    base.mkdir()
    for f in default_base_path().iterdir():
        if f.is_file():
            (base / f.name).write_bytes(f.read_bytes())
    cfg = json.loads((base / "config.json").read_text())
    cfg["quantization_config"] = {"quant_method": "gguf"}
    (base / "config.json").write_text(json.dumps(cfg))
    calls = _steps_taken(monkeypatch)
    with pytest.raises(OptionsError, match="quantization_config") as e:
        run_method("sft", SFTOptions(out=tmp_path / "run", base=base, quick=True))
    assert "\n" not in str(e.value) and calls == [] and not (tmp_path / "run").exists()


def test_unserialisable_model_fails_before_any_step(tmp_path, monkeypatch):
    def broken(*a, **k):
        raise RuntimeError("tensors share memory in a way safetensors refuses\nsecond line")
    calls = _steps_taken(monkeypatch)
    monkeypatch.setattr(runs_mod, "save_checkpoint", broken)
    with pytest.raises(OptionsError, match="cannot be saved") as e:
        run_method("sft", SFTOptions(out=tmp_path / "run", quick=True))
    assert "\n" not in str(e.value) and "second line" not in str(e.value) and calls == []
    assert list(tmp_path.iterdir()) == []  # no scratch folder left


def test_unwritable_out_fails_before_training(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(OptionsError, match="cannot write"):
        run_method("sft", SFTOptions(out=blocker / "run", quick=True))


def test_failure_after_training_leaves_no_run_folder(tmp_path, monkeypatch):
    def boom(*a, **k):
        raise RuntimeError("evaluation failed")
    monkeypatch.setattr(runs_mod, "forward_kl", boom)  # a step after training and saving
    with pytest.raises(RuntimeError):
        run_method("sft", SFTOptions(out=tmp_path / "run", quick=True, save_every=2))
    assert list(tmp_path.iterdir()) == []


def test_interrupt_keeps_finished_checkpoints_marked_interrupted(tmp_path, monkeypatch):
    real = runs_mod.RunWriter.step

    def step(self, s, record):
        real(self, s, record)
        if s == 5:
            raise KeyboardInterrupt
    monkeypatch.setattr(runs_mod.RunWriter, "step", step)
    with pytest.raises(KeyboardInterrupt):
        run_method("sft", SFTOptions(out=tmp_path / "run", quick=True, save_every=2))
    kept = tmp_path / "run.interrupted"
    assert not (tmp_path / "run").exists()
    assert sorted(p.name for p in kept.iterdir()) == ["INTERRUPTED", "checkpoint-2", "checkpoint-4",
                                                      "train_log.jsonl"]
    assert not (kept / "eval.json").exists() and "checkpoint-4" in (kept / "INTERRUPTED").read_text()
    AutoModelForCausalLM.from_pretrained(kept / "checkpoint-4")
    assert [json.loads(x)["step"] for x in (kept / "train_log.jsonl").read_text().splitlines()] == [1, 2, 3, 4, 5]
    assert [p.name for p in tmp_path.iterdir()] == ["run.interrupted"]  # no temporary folder left
