"""Benchmark of an adapter run (docs/adapters.md): peak memory and time beside the dense diff of the merged model.

Creates, if absent (in benchmarks/_data/adapter, or --data DIR), a bf16 base with Llama shapes of about 0.5B
parameters (`_common.llama_shapes(hidden=1024, inter=4096, layers=24)`: 465M), a rank-64 PEFT LoRA adapter (float32
factors, B and A random) on every linear layer of every block, and the bf16 checkpoint merged from them (D in
float32, cast to bf16, added in bf16, as PEFT merges). Then measures, in one run, whole `updelta diff` processes
(`--spectral off` and the default `fast`): the adapter run and the dense diff of the merged model, wall time and peak
RSS of each process (wait4's ru_maxrss, the RUSAGE_CHILDREN figure of that child alone). The adapter diff must stay
under 600 MB.

    python benchmarks/bench_adapter.py [--repeat N] [--data DIR]
"""
from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import DATA, PY, measure  # noqa: E402

UPDELTA = str(Path(sys.executable).parent / "updelta")
LIMIT_MB = 600
RANK = 64

_MAKE = r'''
import json, sys, torch
from pathlib import Path
from safetensors.torch import save_file
sys.path.insert(0, %(here)r)
from _common import llama_shapes
root, r = Path(%(root)r), %(rank)d
shapes = llama_shapes(hidden=1024, inter=4096, layers=24)
g = torch.Generator().manual_seed(0)
base, merged, factors = {}, {}, {}
for n, s in shapes.items():
    w = torch.randn(s, generator=g).mul_(0.02).to(torch.bfloat16)
    base[n] = w
    if len(s) == 2 and ".layers." in n:
        m = n[:-len(".weight")]
        a = torch.randn(r, s[1], generator=g).mul_(s[1] ** -0.5)
        b = torch.randn(s[0], r, generator=g).mul_(1e-3)
        factors[f"base_model.model.{m}.lora_A.weight"] = a
        factors[f"base_model.model.{m}.lora_B.weight"] = b
        merged[n] = w + ((b @ a) * 2.0).to(torch.bfloat16)
    else:
        merged[n] = w
cfg = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "tie_word_embeddings": False}
for d, sd in (("base", base), ("merged", merged)):
    (root / d).mkdir(parents=True, exist_ok=True)
    save_file(sd, str(root / d / "model.safetensors"))
    (root / d / "config.json").write_text(json.dumps(cfg))
(root / "adapter").mkdir(parents=True, exist_ok=True)
save_file(factors, str(root / "adapter" / "adapter_model.safetensors"))
(root / "adapter" / "adapter_config.json").write_text(json.dumps({
    "peft_type": "LORA", "r": r, "lora_alpha": 2 * r, "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj",
    "gate_proj", "up_proj", "down_proj"], "init_lora_weights": True, "bias": "none", "use_rslora": False,
    "use_dora": False, "fan_in_fan_out": False, "rank_pattern": {}, "alpha_pattern": {}}))
'''


def ensure(root: Path) -> Path:
    """Write the three folders in a child process (this measuring process never imports torch)."""
    if not (root / "adapter" / "adapter_config.json").exists():
        subprocess.run([PY, "-c", _MAKE % {"here": str(Path(__file__).parent), "root": str(root), "rank": RANK}],
                       check=True)
    return root


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--data", type=Path, default=DATA / "adapter")
    args = ap.parse_args()
    root = ensure(args.data)
    base, adapter, merged = root / "base", root / "adapter", root / "merged"
    measure(["sh", "-c", f"cat {base}/*.safetensors {merged}/*.safetensors > /dev/null"], 1)  # warm the page cache
    rows = {}
    for spectral in ("off", "fast"):
        rows[f"adapter diff, spectral {spectral}"] = measure(
            [UPDELTA, "diff", str(base), str(adapter), "--spectral", spectral], args.repeat)
        rows[f"merged dense diff, spectral {spectral}"] = measure(
            [UPDELTA, "diff", str(base), str(merged), "--spectral", spectral], args.repeat)
    print(f"{'':36} {'wall s':>8} {'peak RSS MB':>12}")
    for k, v in rows.items():
        print(f"{k:36} {v['wall_s']:8.2f} {v['rss_mb']:12.0f}")
    for spectral in ("off", "fast"):
        a, m = rows[f"adapter diff, spectral {spectral}"], rows[f"merged dense diff, spectral {spectral}"]
        print(f"spectral {spectral}: adapter / merged time ratio {a['wall_s'] / m['wall_s']:.2f}")
    worst = max(v["rss_mb"] for k, v in rows.items() if k.startswith("adapter"))
    print(f"adapter diff peak RSS {worst:.0f} MB (limit {LIMIT_MB} MB): {'ok' if worst < LIMIT_MB else 'OVER'}")
    if worst >= LIMIT_MB:
        sys.exit(1)


if __name__ == "__main__":
    main()
