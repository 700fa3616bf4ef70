"""Short real runs (--quick presets) on the committed base: they train, save, reload with the Auto classes, and
record what other tools read."""
import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from updelta.train import (
    DFTOptions,
    ESOptions,
    GRPOOptions,
    PretrainOptions,
    SFTOptions,
    default_base_path,
    pretrain,
    run_method,
)
from updelta.train.batching import collate
from updelta.train.losses import sft_loss
from updelta.train.tasks import EVAL_SPLITS, train_examples

EVAL_KEYS = {"method", "task", "seed", "save_dtype", "weight_decay", "base", "before", "after"}


def _train_ce(folder, examples):
    """Mean cross-entropy of `examples` under the checkpoint in `folder`, loaded with the Auto classes."""
    model = AutoModelForCausalLM.from_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    batch = collate(examples, tokenizer)
    with torch.no_grad():
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits.float()
    return sft_loss(logits[:, :-1], batch.labels[:, 1:]).item()


def _check_eval(run, method, task):
    record = json.loads((run / "eval.json").read_text())
    assert EVAL_KEYS <= record.keys()
    assert (record["method"], record["task"], record["save_dtype"]) == (method, task, "bfloat16")
    for when in ("before", "after"):
        assert set(record[when]) == set(EVAL_SPLITS)
        assert all(0.0 <= v <= 1.0 for v in record[when].values())
    return record


def test_sft_quick_trains_saves_reloads_and_lowers_the_loss(tmp_path):
    result = run_method("sft", SFTOptions(out=tmp_path / "sft", quick=True, save_every=4))
    run = result.out
    record = _check_eval(run, "sft", "target")
    assert record["weight_decay"] == 0.01 and record["base"] == str(default_base_path().resolve())
    from updelta.io import open_checkpoint
    assert record["base_fingerprint"] == open_checkpoint(default_base_path()).identity()["fingerprint"]
    log = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == list(range(1, len(log) + 1)) and len(log) == 8
    assert {"step", "loss", "lr", "grad_norm", "tokens_per_s"} <= log[0].keys()
    model = AutoModelForCausalLM.from_pretrained(run)
    assert model.dtype == torch.bfloat16 and "lm_head.weight" in dict(model.named_parameters())
    assert sorted(p.name for p in run.glob("checkpoint-*")) == ["checkpoint-4", "checkpoint-8"]
    AutoModelForCausalLM.from_pretrained(run / "checkpoint-4")
    examples = train_examples("target")[:64]
    assert _train_ce(run, examples) < _train_ce(default_base_path(), examples)


def test_same_seed_same_checkpoint_other_seed_other_checkpoint(tmp_path):
    def weights(name, seed):
        run_method("dft", DFTOptions(out=tmp_path / name, quick=True, seed=seed, eval_items=4))
        return (tmp_path / name / "model.safetensors").read_bytes()
    first = weights("a", 1)
    assert weights("b", 1) == first
    assert weights("c", 2) != first


def test_asft_quick_logs_cross_entropy_and_saves_float32(tmp_path):
    run = run_method("dft", DFTOptions(out=tmp_path / "dft", task="knowledge", quick=True, anchor_weight=0.1,
                                       save_dtype="float32", eval_items=8)).out
    record = json.loads((run / "eval.json").read_text())
    assert (record["method"], record["task"], record["save_dtype"]) == ("dft", "knowledge", "float32")
    assert record["options"]["anchor_weight"] == 0.1
    log = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]
    assert all(0 < r["loss"] < r["ce"] for r in log)       # DFT's weighted loss is below the plain CE
    assert AutoModelForCausalLM.from_pretrained(run).dtype == torch.float32


@pytest.mark.parametrize("method, options_cls, log_keys", [
    ("grpo", GRPOOptions, {"reward_mean", "reward_std", "clip_fraction", "kl", "completion_length", "loss"}),
    ("es", ESOptions, {"reward_mean", "reward_std", "update_norm"}),
])
def test_rl_methods_quick_write_the_same_run_folder(tmp_path, method, options_cls, log_keys):
    run = run_method(method, options_cls(out=tmp_path / method, quick=True, eval_items=8)).out
    _check_eval(run, method, "target")
    log = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]
    assert len(log) == 2 and log_keys <= log[0].keys()
    base = AutoModelForCausalLM.from_pretrained(default_base_path())
    tuned = AutoModelForCausalLM.from_pretrained(run)
    assert any(not torch.equal(a, b) for a, b in zip(base.parameters(), tuned.parameters()))


def test_pretrain_quick_writes_a_loadable_base(tmp_path):
    result = pretrain(PretrainOptions(out=tmp_path / "base", quick=True, eval_items=4))
    tokenizer = AutoTokenizer.from_pretrained(result.out)
    assert tokenizer.decode(tokenizer("12+34=")["input_ids"], skip_special_tokens=True) == "12+34="
    model = AutoModelForCausalLM.from_pretrained(result.out)
    assert model.config.tie_word_embeddings is False
    log = [json.loads(line) for line in (result.out / "train_log.jsonl").read_text().splitlines()]
    assert log[-1]["loss"] < log[0]["loss"]


def test_any_local_hf_causal_lm_folder_works_as_base(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    from updelta.train.tokenizer import build_tokenizer
    tokenizer = build_tokenizer()
    config = GPT2Config(vocab_size=len(tokenizer), n_embd=32, n_layer=2, n_head=2, n_positions=128,
                        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                        pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    GPT2LMHeadModel(config).save_pretrained(tmp_path / "gpt2")
    tokenizer.save_pretrained(tmp_path / "gpt2")
    run = run_method("sft", SFTOptions(base=tmp_path / "gpt2", out=tmp_path / "run", quick=True, eval_items=4)).out
    assert json.loads((run / "eval.json").read_text())["base"] == str((tmp_path / "gpt2").resolve())
    assert AutoModelForCausalLM.from_pretrained(run).config.model_type == "gpt2"
    examples = train_examples("target")[:32]
    assert _train_ce(run, examples) < _train_ce(tmp_path / "gpt2", examples)
