"""Shared pieces of the benchmarks: synthetic checkpoints and whole-process measurement."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

DATA = Path(__file__).parent / "_data"


def qwen2_shapes(hidden: int, inter: int, vocab: int, kv: int, layers: int) -> dict[str, tuple[int, ...]]:
    """Tensor shapes of a Qwen2-family model (q/k/v biases, untied head left out): `kv` = KV heads x head dim."""
    h = hidden
    s: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (vocab, h)}
    for i in range(layers):
        p = f"model.layers.{i}."
        s[p + "self_attn.q_proj.weight"] = (h, h)
        s[p + "self_attn.q_proj.bias"] = (h,)
        s[p + "self_attn.k_proj.weight"] = (kv, h)
        s[p + "self_attn.k_proj.bias"] = (kv,)
        s[p + "self_attn.v_proj.weight"] = (kv, h)
        s[p + "self_attn.v_proj.bias"] = (kv,)
        s[p + "self_attn.o_proj.weight"] = (h, h)
        s[p + "mlp.gate_proj.weight"] = (inter, h)
        s[p + "mlp.up_proj.weight"] = (inter, h)
        s[p + "mlp.down_proj.weight"] = (h, inter)
        s[p + "input_layernorm.weight"] = (h,)
        s[p + "post_attention_layernorm.weight"] = (h,)
    s["model.norm.weight"] = (h,)
    return s


def qwen2_05b_shapes(layers: int = 24) -> dict[str, tuple[int, ...]]:
    """Tensor shapes of Qwen2-0.5B (hidden 896, 14 heads, 2 KV heads, MLP 4864, vocab 151936)."""
    return qwen2_shapes(896, 4864, 151936, 128, layers)


def qwen25_3b_shapes(layers: int = 36, vocab: int = 151936) -> dict[str, tuple[int, ...]]:
    """Tensor shapes of Qwen2.5-3B (hidden 2048, 16 heads, 2 KV heads, MLP 11008, vocab 151936, tied embeddings);
    fewer `layers` keep the per-tensor shapes (what the kernel's per-element cost depends on) at a smaller size."""
    return qwen2_shapes(2048, 11008, vocab, 256, layers)


def llama_shapes(hidden: int = 1024, inter: int = 2816, layers: int = 10, vocab: int = 32000,
                 head: bool = True) -> dict[str, tuple[int, ...]]:
    """Tensor shapes of a Llama-architecture model (untied `lm_head` unless `head=False`)."""
    s: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (vocab, hidden)}
    for i in range(layers):
        p = f"model.layers.{i}."
        for m in ("q_proj", "k_proj", "v_proj", "o_proj"):
            s[p + f"self_attn.{m}.weight"] = (hidden, hidden)
        s[p + "mlp.gate_proj.weight"] = (inter, hidden)
        s[p + "mlp.up_proj.weight"] = (inter, hidden)
        s[p + "mlp.down_proj.weight"] = (hidden, inter)
        s[p + "input_layernorm.weight"] = (hidden,)
        s[p + "post_attention_layernorm.weight"] = (hidden,)
    s["model.norm.weight"] = (hidden,)
    if head:
        s["lm_head.weight"] = (vocab, hidden)
    return s


def write_pair(folder: Path, shapes: dict[str, tuple[int, ...]], shards: int = 5, frac: float = 0.3,
               noise: float = 1e-3, seed: int = 0) -> tuple[Path, Path]:
    """A bf16 base and fine-tune (base + noise on `frac` of elements), sharded HF folders. Skips if present."""
    import torch
    from safetensors.torch import save_file

    base, ft = folder / "base", folder / "ft"
    if (ft / "model.safetensors.index.json").exists():
        return base, ft
    g = torch.Generator().manual_seed(seed)
    names = list(shapes)
    per = -(-len(names) // shards)
    for d in (base, ft):
        d.mkdir(parents=True, exist_ok=True)
    wm = {}
    for i in range(shards):
        part = names[i * per:(i + 1) * per]
        fname = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        b, f = {}, {}
        for n in part:
            w = torch.randn(shapes[n], generator=g).mul_(0.02).to(torch.bfloat16)
            mask = torch.rand(shapes[n], generator=g) < frac
            d = torch.randn(shapes[n], generator=g).mul_(noise).mul_(mask)
            b[n], f[n] = w, (w.float() + d).to(torch.bfloat16)
            wm[n] = fname
        save_file(b, str(base / fname))
        save_file(f, str(ft / fname))
        del b, f
    for d in (base, ft):
        (d / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": wm}))
        (d / "config.json").write_text(json.dumps({"model_type": "qwen2", "tie_word_embeddings": True}))
    return base, ft


def ensure_pair(folder: Path, layers: int, tiny: bool = False) -> tuple[Path, Path]:
    """`write_pair` in a child process, so this (measuring) process never imports torch: a forked child
    counts its parent's resident pages in its own peak RSS until it execs."""
    code = ("import sys; sys.path.insert(0, %r); from _common import *; "
            "s = qwen2_05b_shapes(%d); "
            "s = {k: tuple(min(x, 64) for x in v) for k, v in s.items()} if %r else s; "
            "write_pair(Path(%r), s, shards=1 if %r else 5)") % (str(Path(__file__).parent), layers, tiny,
                                                                 str(folder), tiny)
    subprocess.run([PY, "-c", code], check=True)
    return folder / "base", folder / "ft"


def measure(cmd: list[str], repeat: int = 1, env: dict | None = None, cwd: Path | None = None) -> dict:
    """Run `cmd` `repeat` times; the best wall time, its CPU seconds (user + system, of the process and the
    children it waited for) and the peak RSS (MB) of that process alone (wait4).
    `env`: extra environment variables; `cwd`: working folder of the process."""
    best = None
    for _ in range(repeat):
        t0 = time.perf_counter()
        p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=cwd,
                             env={**os.environ, "UPDELTA_PROGRESS": "0", **(env or {})})
        _, status, ru = os.wait4(p.pid, 0)
        wall = time.perf_counter() - t0
        err = p.stderr.read().decode()
        p.stderr.close()
        if os.waitstatus_to_exitcode(status) != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed: {err[-2000:]}")
        r = {"wall_s": wall, "cpu_s": ru.ru_utime + ru.ru_stime, "rss_mb": ru.ru_maxrss / 1024}
        if best is None or r["wall_s"] < best["wall_s"]:
            best = r
    return best


def folder_bytes(*folders: Path) -> int:
    return sum(f.stat().st_size for d in folders for f in d.glob("*.safetensors"))


PY = sys.executable
