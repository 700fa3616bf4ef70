"""E_x KL(pi_0 || pi) per token on the start model's greedy answers: zero for the same model, and a float64
reference computed over full logits for a perturbed copy."""
import copy

import torch
import torch.nn.functional as F

from updelta.train.batching import until_end
from updelta.train.forgetting import forward_kl
from updelta.train.model import default_base_path, load_model

PROMPTS = ["12+34=", "5+7=", "123+456=", "color of kavo?"]


def test_forward_kl_known_answer():
    start, tok = load_model(default_base_path())
    assert forward_kl(start, start, tok, PROMPTS, 12)["kl_per_token"] == 0.0
    moved = copy.deepcopy(start)
    with torch.no_grad():
        for p in moved.parameters():
            p.add_(0.02 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    got = forward_kl(start, moved, tok, PROMPTS, 12, rows_per_chunk=3)
    # reference: full-width logits in float64, KL at every answer position
    enc = tok(PROMPTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        out = start.generate(**enc, do_sample=False, max_new_tokens=12)
        w = enc["input_ids"].shape[1]
        mask = until_end(out[:, w:], tok.eos_token_id)
        att = torch.cat([enc["attention_mask"], mask.long()], 1)
        pos = (att.cumsum(-1) - 1).clamp(min=0)
        l0 = start(input_ids=out, attention_mask=att, position_ids=pos).logits[:, w - 1:-1].double()
        l1 = moved(input_ids=out, attention_mask=att, position_ids=pos).logits[:, w - 1:-1].double()
    lp0, lp1 = F.log_softmax(l0, -1), F.log_softmax(l1, -1)
    ref = ((lp0.exp() * (lp0 - lp1)).sum(-1)[mask]).mean().item()
    assert got["tokens"] == int(mask.sum()) and got["prompts"] == 4
    assert ref > 1e-4 and abs(got["kl_per_token"] - ref) < 1e-5 * max(1.0, ref)


def test_measure_forgetting_uses_the_runs_own_task():
    """RL's Razor measures the KL on the task being learned: a knowledge run's `kl_per_token` is the KL on the
    knowledge prompts (the same number `forward_kl` gives on them), the target prompts' KL is kept for reference."""
    from updelta.train.runs import measure_forgetting
    from updelta.train.suites import build_suite

    base = default_base_path()
    start, tok = load_model(base)
    moved = copy.deepcopy(start)
    with torch.no_grad():
        for p in moved.parameters():
            p.add_(0.02 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel() + 1)))
    suite = build_suite(tok)
    got = measure_forgetting(moved, tok, suite, base, 6, task="knowledge")
    assert got["split"] == "knowledge" and got["prompts"] == 6 and set(got["by_split"]) == {"knowledge", "target_id"}
    items = suite.eval_items("knowledge", 6)
    budget = max(len(tok(x.completion, add_special_tokens=False)["input_ids"]) for x in items) + suite.margin_tokens
    ref = forward_kl(start, moved, tok, [x.prompt for x in items], budget)
    assert got["kl_per_token"] == ref["kl_per_token"] and got["tokens"] == ref["tokens"]
    assert got["by_split"]["knowledge"]["kl_per_token"] == ref["kl_per_token"]
    target = measure_forgetting(moved, tok, suite, base, 6, task="target")
    assert target["split"] == "target_id" and target["kl_per_token"] == got["by_split"]["target_id"]["kl_per_token"]
    assert target["kl_per_token"] != got["kl_per_token"]
