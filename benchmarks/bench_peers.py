"""updelta against its published peers on one checkpoint pair: speed, memory and agreement.

Peers: modeldelta 0.4.4 (its CLI; per 2-D tensor an effective rank and
top singular values of the delta from a full SVD), afterburn 0.6.3 (`afterburn weight-diff --base A
--trained B --device cpu -o out.json`: per-layer relative norms and cosines; it loads through
transformers, so each folder needs a config.json with `model_type`) and WeightWatcher 0.7.7
(`analyze(model=ft, base_model=base)`: ESD metrics such as `stable_rank` and `spectral_norm` =
sigma_1^2 per layer). They are installed in their own virtual environment, `.peers/` at the
repository root (git-ignored; `--venv` to move it), torch==2.13.0 first so that their unpinned
`torch` requirement cannot pull a CUDA build or change the project's torch. updelta runs with
`--no-cache` (the base-decomposition cache cold and off).

Pairs (`--pair`): `llama125m` (below) or `smollm2`: SmolLM2-135M-Instruct (`updelta.models.smollm2`)
against a fine-tune of it by 4 plain AdamW steps (lr 3e-4, batch 2 x 32 random tokens) with
transformers, saved in bf16 (`make_smollm2_pair`).

The pair (created when absent, under `benchmarks/_data/`, git-ignored): a 125M-parameter Llama-shaped
model in bf16 safetensors (hidden 768, 12 layers, 12 heads, 4 KV heads, intermediate 2048, vocab
32000, untied lm_head), fine-tune = base + Gaussian noise (std 1e-3, about 5% of the weights' std)
rounded to bf16.

Each tool runs as a whole process (Python start, imports, reading, compute, writing) and is measured
with wait4's rusage: wall seconds and peak RSS; `--rounds` rounds in rotation, the fastest kept, all
with the same `--threads` (OMP/MKL/OpenBLAS) and OMP_WAIT_POLICY=PASSIVE. Then the per-matrix figures are put side by side:
stable rank, sigma_1 and effective rank, with max and median relative differences where the
definitions match (the script says where they do not, from the peers' own code).

    .venv/bin/python benchmarks/bench_peers.py            # set up what is missing, run all, print the table
    .venv/bin/python benchmarks/bench_peers.py --setup    # only the venv and the data
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"
DATA = BENCH / "_data"
VENV = ROOT / ".peers"
PEERS = ["modeldelta==0.4.4", "afterburn==0.6.3", "weightwatcher==0.7.7", "transformers>=4.45,<6", "safetensors"]
TORCH = "torch==2.13.0"
PAIR = DATA / "llama125m"
CFG = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, num_key_value_heads=4,
           intermediate_size=2048, vocab_size=32000, max_position_embeddings=2048, rms_norm_eps=1e-6,
           tie_word_embeddings=False, rope_theta=10000.0, hidden_act="silu")
NOISE = 1e-3


# ---------------------------------------------------------------------------------------------
# set-up
# ---------------------------------------------------------------------------------------------

def venv_python() -> Path:
    return VENV / "bin" / "python"


def setup_venv() -> None:
    py = venv_python()
    marker = VENV / ".installed"
    if marker.exists():
        return
    print(f"setting up {VENV} (torch first, then {', '.join(PEERS)})", flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    pip = [str(py), "-m", "pip", "install", "-q"]
    subprocess.run(pip + ["--upgrade", "pip"], check=True)
    subprocess.run(pip + [TORCH], check=True)
    subprocess.run(pip + PEERS + [TORCH], check=True)  # repeat the pin so the resolver keeps it
    marker.write_text(subprocess.run([str(py), "-m", "pip", "freeze"], capture_output=True, text=True).stdout)


def make_pair(path: Path = PAIR) -> tuple[Path, Path]:
    """Base and fine-tuned HF folders (config.json + model.safetensors, bf16)."""
    import torch
    from safetensors.torch import save_file

    b, f = path / "base", path / "ft"
    if (b / "model.safetensors").exists() and (f / "model.safetensors").exists():
        return b, f
    h, L, nh, kv = CFG["hidden_size"], CFG["num_hidden_layers"], CFG["num_attention_heads"], CFG["num_key_value_heads"]
    inter, V = CFG["intermediate_size"], CFG["vocab_size"]
    hd = h // nh
    g = torch.Generator().manual_seed(0)
    shapes = {"model.embed_tokens.weight": (V, h), "model.norm.weight": (h,), "lm_head.weight": (V, h)}
    for i in range(L):
        p = f"model.layers.{i}."
        shapes.update({
            p + "self_attn.q_proj.weight": (nh * hd, h), p + "self_attn.k_proj.weight": (kv * hd, h),
            p + "self_attn.v_proj.weight": (kv * hd, h), p + "self_attn.o_proj.weight": (h, nh * hd),
            p + "mlp.gate_proj.weight": (inter, h), p + "mlp.up_proj.weight": (inter, h),
            p + "mlp.down_proj.weight": (h, inter),
            p + "input_layernorm.weight": (h,), p + "post_attention_layernorm.weight": (h,),
        })
    base, ft = {}, {}
    for name, shp in shapes.items():
        if len(shp) == 1:
            w = 1.0 + 0.05 * torch.randn(shp, generator=g)
        else:
            w = 0.02 * torch.randn(shp, generator=g)
        base[name] = w.to(torch.bfloat16)
        ft[name] = (w + NOISE * torch.randn(shp, generator=g)).to(torch.bfloat16)
    cfg = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "torch_dtype": "bfloat16",
           "head_dim": hd, "bos_token_id": 1, "eos_token_id": 2, **CFG}
    for d, sd in ((b, base), (f, ft)):
        d.mkdir(parents=True, exist_ok=True)
        save_file(sd, str(d / "model.safetensors"), metadata={"format": "pt"})
        (d / "config.json").write_text(json.dumps(cfg, indent=1))
    n = sum(t.numel() for t in base.values())
    print(f"made {path}: {n / 1e6:.1f}M parameters, bf16", flush=True)
    return b, f


def make_smollm2_pair(path: Path = DATA / "smollm2", steps: int = 4) -> tuple[Path, Path]:
    """SmolLM2-135M-Instruct (bf16) and a fine-tune of it: `steps` plain AdamW steps on random tokens, bf16."""
    import shutil

    import torch
    from transformers import AutoModelForCausalLM

    from updelta.models.smollm2 import smollm2_path

    b, f = path / "base", path / "ft"
    if (b / "model.safetensors").exists() and (f / "model.safetensors").exists():
        return b, f
    src = smollm2_path()
    torch.manual_seed(0)
    m = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32)
    m.train()
    opt = torch.optim.AdamW(m.parameters(), lr=3e-4, weight_decay=0.0)
    for _ in range(steps):
        x = torch.randint(0, m.config.vocab_size, (2, 32))
        m(input_ids=x, labels=x).loss.backward()
        opt.step()
        opt.zero_grad()
    f.mkdir(parents=True, exist_ok=True)
    m.to(torch.bfloat16).save_pretrained(f, safe_serialization=True)
    if not b.exists():
        shutil.copytree(src, b)
    return b, f


# ---------------------------------------------------------------------------------------------
# runs: one whole process each, wall time and peak RSS from wait4
# ---------------------------------------------------------------------------------------------

WW_SCRIPT = r"""
import sys, time
t0 = time.perf_counter()
import torch, weightwatcher as ww
from transformers import AutoModelForCausalLM
torch.set_num_threads(int(sys.argv[4]))
base = AutoModelForCausalLM.from_pretrained(sys.argv[1], dtype=torch.bfloat16)
ft = AutoModelForCausalLM.from_pretrained(sys.argv[2], dtype=torch.bfloat16)
t1 = time.perf_counter()
details = ww.WeightWatcher().analyze(model=ft, base_model=base)
t2 = time.perf_counter()
details.to_csv(sys.argv[3], index=False)
print(f"weightwatcher: load {t1 - t0:.1f} s, analyze {t2 - t1:.1f} s", file=sys.stderr)
"""


def run_measured(cmd: list[str], log: Path, env: dict | None = None) -> dict:
    """Run `cmd` as a child process; wall seconds and peak RSS (GB, of that process) from wait4."""
    t0 = time.perf_counter()
    with open(log, "w") as f:
        p = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        _, status, ru = os.wait4(p.pid, 0)
    wall = time.perf_counter() - t0
    p.returncode = os.waitstatus_to_exitcode(status)
    return {"wall_s": wall, "rss_gb": ru.ru_maxrss / 1024 ** 2, "rc": p.returncode, "log": str(log)}


def run_all(out: Path, threads: int, which: list[str], rounds: int = 1, pair: str = "llama125m") -> dict[str, dict]:
    """Each tool `rounds` times, in rotation (so that a burst of load from elsewhere hits every tool alike);
    the fastest round is kept (with its peak RSS; `walls` lists every round)."""
    b, f = make_smollm2_pair() if pair == "smollm2" else make_pair()
    out.mkdir(parents=True, exist_ok=True)
    # the same threads for every tool; passive OpenMP waiting because spinning threads are many times
    # slower on a shared, loaded machine (svdvals 2048^2: 13-35 s spinning vs 1.6 s passive, load 2.6)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": str(threads),
           "MKL_NUM_THREADS": str(threads), "OPENBLAS_NUM_THREADS": str(threads), "OMP_WAIT_POLICY": "PASSIVE"}
    updelta = str(ROOT / ".venv" / "bin" / "updelta")
    cmds = {
        "updelta fast": [updelta, "diff", str(b), str(f), "--spectral", "fast", "--out", str(out / "fast.parquet"),
                         "--no-progress", "--no-cache"],
        "updelta full": [updelta, "diff", str(b), str(f), "--spectral", "full", "--out", str(out / "full.parquet"),
                         "--no-progress", "--no-cache"],
        "afterburn": [str(VENV / "bin" / "afterburn"), "weight-diff", "--base", str(b), "--trained", str(f),
                      "--device", "cpu", "-o", str(out / "afterburn.json")],
        "modeldelta": [str(VENV / "bin" / "modeldelta"), str(b), str(f), "-o", str(out / "modeldelta.json"), "-q"],
        "weightwatcher": [str(venv_python()), "-c", WW_SCRIPT, str(b), str(f), str(out / "ww.csv"), str(threads)],
    }
    res: dict[str, dict] = {}
    for rnd in range(rounds):
        for name in which:
            print(f"round {rnd + 1}: running {name} ...", flush=True)
            r = run_measured(cmds[name], out / (name.replace(" ", "_") + ".log"), env)
            print(f"  {name}: {r['wall_s']:.1f} s, peak RSS {r['rss_gb']:.2f} GB, exit {r['rc']}, "
                  f"load {os.getloadavg()[0]:.2f}", flush=True)
            walls = res.get(name, {}).get("walls", []) + [round(r["wall_s"], 2)]
            if name not in res or r["wall_s"] < res[name]["wall_s"]:
                res[name] = r
            res[name]["walls"] = walls
    return res


# ---------------------------------------------------------------------------------------------
# agreement
# ---------------------------------------------------------------------------------------------

def load_tables(out: Path):
    import numpy as np
    import pandas as pd

    tabs = {}
    for mode in ("fast", "full"):
        p = out / f"{mode}.parquet"
        if p.exists():
            t = pd.read_parquet(p)
            t = t[t["spectral_s"].notna()].set_index("name")
            tabs[f"updelta {mode}"] = pd.DataFrame({
                "sigma_1": t["topk_sv"].map(lambda v: float(v[0]) if v is not None and len(v) else np.nan),
                "stable_rank": t["stable_rank"],
                "erank": t["erank"] if "erank" in t else np.nan,
                "spectral_s": t["spectral_s"],
            })
    p = out / "modeldelta.json"
    if p.exists():
        mods = json.loads(p.read_text())["modules"]
        rows = {}
        for m_ in mods:
            if not m_.get("has_svd"):
                continue
            s1 = float(m_["top_singular_values"][0])
            rows[m_["name"]] = {"sigma_1": s1, "erank": m_["effective_rank"],
                                # modeldelta has no stable rank: ||D||_F^2 / s_1^2 from its own frob_norm and s_1
                                "stable_rank": m_["frob_norm"] ** 2 / s1 ** 2 if s1 > 0 else np.nan}
        tabs["modeldelta"] = pd.DataFrame.from_dict(rows, orient="index")
    p = out / "ww.csv"
    if p.exists():
        w = pd.read_csv(p)
        key = "longname" if "longname" in w else "name"  # `name` is the short module name (q_proj)
        w = w[w[key].notna()]
        idx = w[key].astype(str) + ".weight"
        tabs["weightwatcher"] = pd.DataFrame({
            "sigma_1": np.sqrt(w["spectral_norm"].to_numpy()),  # WW's spectral_norm is sigma_1^2
            "stable_rank": w["stable_rank"].to_numpy(),
        }, index=idx.to_numpy())
    return tabs


def norm_agreement(out: Path) -> list[dict]:
    """afterburn's norms (its top-5 changed layers and the embedding: ||D||_F and ||D||_F / ||W0||_F) against
    updelta's, from the same pair: per layer, sqrt(sum over the layer's tensors of delta_fro^2) (and base_fro)."""
    import numpy as np
    import pandas as pd

    p, q = out / "afterburn.json", next((out / f"{m}.parquet" for m in ("fast", "full") if (out / f"{m}.parquet").exists()),
                                          None)
    if not p.exists() or q is None:
        return []
    ab = json.loads(p.read_text())["weight_diff"]
    t = pd.read_parquet(q)
    rows = []
    for lay in ab.get("top_changed_layers", []):
        name = lay["layer_name"]
        if name == "embedding":
            sel = t[t["name"].str.endswith("embed_tokens.weight")]
        elif name.startswith("layer_"):
            sel = t[t["layer"] == int(name.split("_")[1])]
        else:
            continue
        d = float(np.sqrt((sel["delta_fro"] ** 2).sum()))
        b = float(np.sqrt((sel["base_fro"] ** 2).sum()))
        for col, mine, theirs in (("fro", d, lay["frobenius_norm"]), ("relative", d / b, lay["relative_change"])):
            rows.append({"layer": name, "metric": col, "updelta": mine, "afterburn": float(theirs),
                         "rel_diff": abs(float(theirs) - mine) / abs(mine) if mine else float("nan"),
                         "afterburn_cosine": lay.get("cosine_similarity")})
    return rows


def agreement(tabs, ref: str = "updelta full"):
    import numpy as np

    rows = []
    R = tabs.get(ref)
    if R is None:
        return rows
    for tool, t in tabs.items():
        if tool == ref:
            continue
        for col in ("sigma_1", "stable_rank", "erank"):
            if col not in t or t[col].isna().all() or col not in R or R[col].isna().all():
                continue
            common = t.index.intersection(R.index)
            a = t.loc[common, col].astype(float)
            b_ = R.loc[common, col].astype(float)
            ok = a.notna() & b_.notna() & (b_ != 0)
            if not ok.any():
                continue
            d = (a[ok] - b_[ok]).abs() / b_[ok].abs()
            worst = d.idxmax()
            rows.append({"tool": tool, "metric": col, "n": int(ok.sum()), "max_rel": float(d.max()),
                         "median_rel": float(np.median(d)), "worst": worst,
                         "within_1e-3": int((d <= 1e-3).sum())})
    return rows


NOTES = """Where the definitions match and where they do not (from the peers' installed code):
- modeldelta 0.4.4 (core/weight_diff.py): D = W_b.float() - W_a.float(); `torch.linalg.svdvals(D)` when
  min(m, n) <= 8192 (a randomized range finder without power iterations above); `effective_rank` =
  exp(entropy of s / sum s) over s / sum s > 1e-12: Roy & Vetterli, as updelta's `erank` (full mode).
  `top_singular_values[0]` = sigma_1. It has no stable rank: compared here as its frob_norm^2 / sigma_1^2
  (the same definition, from its own numbers). Tensors under 1000 elements are skipped.
- WeightWatcher 0.7.7 (weightwatcher.py, WWDeltaLayerIterator, combined_eigenvalues, apply_norm_metrics):
  with base_model it analyses W_ft - W_base per layer (layers paired in iteration order by name
  containment); evals = sv^2 of that difference (float64 SVD); `stable_rank` = sum(evals) / max(evals) =
  ||D||_F^2 / sigma_1^2 (matches); `spectral_norm` = max(evals) = sigma_1^2 (compared as its square root).
  Its `entropy`/`matrix_rank` are not Roy-Vetterli's effective rank (not compared). Which layers it
  analyses is its choice (see the n column).
- afterburn 0.6.3 (weight-diff): per layer (embedding, layer_i) the Frobenius norm of the update and
  ||D||_F / ||W0||_F, for its top 5 changed layers only, and a cosine; no spectra, no per-tensor rows. Its
  reductions run in float32 (seen: the embedding norm low, a cosine above 1), updelta's in float64.
- updelta fast: top-16 from the Gram matrix (tall) or block Krylov, ||D||_F exact; no erank in fast mode."""


def print_report(res: dict[str, dict], tabs, threads: int, out_dir: Path | None = None) -> None:
    import pandas as pd

    print(f"\nWhole process, {threads} thread(s) per tool (OMP/MKL/OpenBLAS), load average now "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    ref = res.get("modeldelta")
    print(f"{'tool':<16} {'wall_s':>8} {'peak_RSS_GB':>12} {'vs modeldelta':>14} {'spectral_s(sum)':>16}  rounds")
    for name, r in res.items():
        sp_sum = tabs.get(name, pd.DataFrame()).get("spectral_s")
        sps = f"{sp_sum.sum():.1f}" if sp_sum is not None else "-"
        speed = f"{ref['wall_s'] / r['wall_s']:.2f}x" if ref else "-"
        print(f"{name:<16} {r['wall_s']:8.1f} {r['rss_gb']:12.2f} {speed:>14} {sps:>16}  {r.get('walls', '')}"
              + ("" if r["rc"] == 0 else f"  (exit {r['rc']}, see {r['log']})"))
    rows = agreement(tabs)
    if rows:
        print("\nAgreement with updelta --spectral full, per 2-D matrix (relative difference)")
        print(f"{'tool':<16} {'metric':<12} {'n':>4} {'max_rel':>10} {'median_rel':>11} {'<=1e-3':>7}  worst")
        for r in rows:
            print(f"{r['tool']:<16} {r['metric']:<12} {r['n']:>4} {r['max_rel']:10.2e} {r['median_rel']:11.2e} "
                  f"{r['within_1e-3']:>7}  {r['worst']}")
    full = tabs.get("updelta full")
    if full is not None:
        names = [n for n in ("model.embed_tokens.weight", "model.layers.0.self_attn.q_proj.weight",
                             "model.layers.0.self_attn.k_proj.weight", "model.layers.5.mlp.down_proj.weight",
                             "lm_head.weight") if n in full.index]
        print("\nSide by side (a few matrices): sigma_1 / stable_rank / erank")
        for n in names:
            cells = []
            for tool, t in tabs.items():
                if n in t.index:
                    x = t.loc[n]
                    er = x.get("erank")
                    cells.append(f"{tool}: {x['sigma_1']:.6g} / {x['stable_rank']:.6g}"
                                 + (f" / {er:.6g}" if er is not None and er == er else ""))
            print(f"  {n}\n    " + "\n    ".join(cells))
    nrows = norm_agreement(out_dir) if out_dir is not None else []
    if nrows:
        print("\nNorms: afterburn (its top-5 changed layers) vs updelta (float64 sums of the same tensors)")
        for r in nrows:
            print(f"  {r['layer']:<10} {r['metric']:<9} updelta {r['updelta']:.6g}  afterburn {r['afterburn']:.6g}  "
                  f"rel diff {r['rel_diff']:.2e}  (afterburn cosine {r['afterburn_cosine']})")
    print("\n" + NOTES)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description="updelta vs modeldelta and WeightWatcher")
    ap.add_argument("--setup", action="store_true", help="only create the pair and the peers' venv")
    ap.add_argument("--out", default=None, help="default benchmarks/_data/peers_out_<pair>")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--pair", default="llama125m", choices=["llama125m", "smollm2"])
    ap.add_argument("--only", default="updelta fast,updelta full,modeldelta,afterburn,weightwatcher",
                    help="comma-separated subset of the runs")
    ap.add_argument("--rounds", type=int, default=2, help="runs per tool, in rotation; the fastest is kept")
    ap.add_argument("--report-only", action="store_true", help="compare the outputs already in --out")
    a = ap.parse_args(argv)
    make_pair()
    setup_venv()
    if a.setup:
        return
    out = Path(a.out or DATA / f"peers_out_{a.pair}")
    res = {}
    if not a.report_only:
        res = run_all(out, a.threads, [x.strip() for x in a.only.split(",") if x.strip()], a.rounds, a.pair)
        (out / "runs.json").write_text(json.dumps(res, indent=1))
    elif (out / "runs.json").exists():
        res = json.loads((out / "runs.json").read_text())
    print_report(res, load_tables(out), a.threads, out)


if __name__ == "__main__":
    main()
