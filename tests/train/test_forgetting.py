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
