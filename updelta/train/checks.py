"""What a finished run is checked for before it is called a result: did the weights move, was there a signal, and
how large was the budget (docs/methods.md, "Budgets and no-op checks").

- `no_update`: every tensor of the saved checkpoint equals the start's tensor cast to the save dtype, bit for bit
  (a zero learning rate, a reward that never varied, or an update below the storage precision).
- `no_signal`: an RL run (GRPO, ES) whose reward was constant within every group (GRPO) or across every population
  (ES) on every rollout: its advantages were all zero, so it learned nothing by construction.
- `update_budget`: steps, peak learning rate, steps x lr, and the share of elements whose accumulated update (fp32
  master weights minus start) exceeds half a bf16 ULP of the start value, i.e. the share that a bf16 save can show
  as changed at all.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import torch
from safetensors import safe_open


def _tensors(folder: Path) -> Iterator[tuple[str, torch.Tensor]]:
    for f in sorted(Path(folder).glob("*.safetensors")):
        with safe_open(str(f), framework="pt") as h:
            for name in h.keys():
                yield name, h.get_tensor(name)


def _start_tensors(folder: Path) -> dict[str, Path]:
    out = {}
    for f in sorted(Path(folder).glob("*.safetensors")):
        with safe_open(str(f), framework="pt") as h:
            out.update({n: f for n in h.keys()})
    return out


def _start(files: dict[str, Path], name: str) -> torch.Tensor | None:
    f = files.get(name)
    if f is None:
        return None
    with safe_open(str(f), framework="pt") as h:
        return h.get_tensor(name)


def bit_identical(start: Path, saved: Path) -> bool:
    """Every tensor of `saved` equals the same-named tensor of `start` cast to the saved dtype."""
    files = _start_tensors(start)
    seen = 0
    for name, t in _tensors(saved):
        s = _start(files, name)
        if s is None or s.shape != t.shape or not torch.equal(s.to(t.dtype), t):
            return False
        seen += 1
    return seen > 0


def no_signal(records: list[dict[str, Any]]) -> bool | None:
    """True when every logged rollout had no reward signal (`signal` false); None for methods without rollouts."""
    flags = [r["signal"] for r in records if "signal" in r]
    return None if not flags else not any(flags)


def half_ulp_bf16(x: torch.Tensor) -> torch.Tensor:
    """Half the bf16 spacing at |x| (for x == 0: half the smallest normal bf16 spacing)."""
    _, e = torch.frexp(x.float())             # x = m 2^e, 0.5 <= |m| < 1: bf16 spacing 2^(e - 8)
    half = torch.ldexp(torch.ones_like(x, dtype=torch.float32), (e - 9).float())
    return torch.where(x == 0, torch.full_like(half, 2.0 ** -134), half)


@torch.no_grad()
def update_budget(model: torch.nn.Module, start: Path, steps: int, lr: float, chunk: int = 1 << 20
                  ) -> dict[str, Any]:
    """steps, lr, steps x lr and the share of elements moved by more than half a bf16 ULP (see the module doc).
    Each start file is opened once and tensors are compared `chunk` elements at a time (bounded memory)."""
    params = dict(model.named_parameters())
    moved = total = 0
    for f in sorted(Path(start).glob("*.safetensors")):
        with safe_open(str(f), framework="pt") as h:
            for name in h.keys():
                p = params.get(name)
                if p is None:
                    continue
                s = h.get_tensor(name)
                if s.shape != p.shape:
                    continue
                s, w = s.reshape(-1), p.detach().reshape(-1)
                for i in range(0, s.numel(), chunk):
                    s0 = s[i:i + chunk].float()
                    moved += int(((w[i:i + chunk].float() - s0).abs() > half_ulp_bf16(s0)).sum())
                total += s.numel()
    return {"steps": steps, "lr": lr, "steps_x_lr": steps * lr,
            "share_above_half_bf16_ulp": moved / total if total else None}
