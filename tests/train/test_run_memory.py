"""What keeps a real base's runs in memory without changing a number: saving casts in place and restores the
float32 weights, evaluation loads the saved weights into the training model, activation checkpointing gives the
same gradients, per-row generation budgets give the texts of separate calls, and the start folder's greedy results
are cached (under the test's own cache folder)."""
import copy
import json

import torch
from safetensors.torch import load_file
from transformers import LlamaConfig, LlamaForCausalLM

from updelta.train.evalcache import cached
from updelta.train.evaluate import evaluate_model, generate, judge, pack_splits
from updelta.train.model import activation_checkpointing, default_base_path, load_model, load_weights, save_checkpoint
from updelta.train.suites import build_suite


def _tied():
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)
    return LlamaForCausalLM(cfg)


def test_save_casts_in_place_and_load_weights_round_trips(tmp_path):
    model, tok = load_model(default_base_path())
    tied = _tied()
    for m in (model, tied):
        with torch.no_grad():
            for p in m.parameters():
                p.add_(1e-3 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
        before = {k: v.clone() for k, v in m.state_dict().items()}
        config_dtype = m.config.dtype
        ref = copy.deepcopy(m).to(torch.bfloat16)
        out = tmp_path / f"saved-{len(before)}"
        save_checkpoint(m, tok, out, "bfloat16")
        saved = load_file(out / "model.safetensors")
        expected = {k: v for k, v in ref.state_dict().items() if k in saved}
        assert set(saved) == set(expected) and all(torch.equal(saved[k], expected[k]) for k in saved)
        assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
        # the training model is untouched: float32 values, config dtype
        assert all(torch.equal(before[k], v) and v.dtype == torch.float32 for k, v in m.state_dict().items())
        assert m.config.dtype == config_dtype
        load_weights(m, out)
        assert all(torch.equal(v, before[k].bfloat16().float()) for k, v in m.state_dict().items())
    assert tied.lm_head.weight is tied.model.embed_tokens.weight


def test_activation_checkpointing_gives_the_same_gradients():
    model = _tied().train()
    ids = torch.randint(0, 300, (3, 12), generator=torch.Generator().manual_seed(1))
    grads = []
    for on in (False, True):
        activation_checkpointing(model, on)
        model.zero_grad(set_to_none=True)
        model(input_ids=ids, labels=ids, use_cache=False).loss.backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    activation_checkpointing(model, False)
    assert all(torch.allclose(a, b, rtol=0, atol=1e-7) for a, b in zip(*grads))


def test_per_row_budgets_and_split_batching_match_separate_calls():
    model, tok = load_model(default_base_path())
    prompts = ["12+34=", "5+7=", "color of kavo?"]
    together = generate(model, tok, prompts, [3, 9, 6])
    assert together == [generate(model, tok, [p], b)[0] for p, b in zip(prompts, [3, 9, 6])]
    assert pack_splits({"a": 8, "b": 8, "c": 20, "d": 8}, 32) == [["a", "b"], ["c", "d"]]
    assert pack_splits({"a": 200, "b": 200}, 256) == [["a"], ["b"]]
    suite = build_suite(tok)
    got = evaluate_model(model, tok, 12, suite)  # toy: 4 x 12 items, one batch
    for split, acc in got.items():
        items = suite.eval_items(split, 12)
        assert acc == sum(judge(model, tok, items, suite.correct, suite.margin_tokens)) / len(items)


def test_cached_computes_once_per_folder_content(tmp_path, monkeypatch):
    monkeypatch.setenv("UPDELTA_CACHE_DIR", str(tmp_path / "cache"))
    folder = tmp_path / "start"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    calls = []
    compute = lambda: calls.append(1) or {"a": 0.5}  # noqa: E731
    assert cached("before", folder, {"items": [1]}, compute) == {"a": 0.5}
    assert cached("before", folder, {"items": [1]}, compute) == {"a": 0.5} and len(calls) == 1
    cached("before", folder, {"items": [2]}, compute)              # other items: computed
    (folder / "config.json").write_text('{"changed": 1}')          # other content: computed
    cached("before", folder, {"items": [1]}, compute)
    assert len(calls) == 3 and len(list((tmp_path / "cache" / "evals").iterdir())) == 3
