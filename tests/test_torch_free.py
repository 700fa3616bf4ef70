"""Saved results are read, reported, gated and plotted without importing torch (a subprocess checks sys.modules)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import ckpt
import updelta

SCRIPT = r"""
import json, sys
from pathlib import Path
import updelta
from updelta.cli import main

src, out = Path(sys.argv[1]), Path(sys.argv[2])
steps = {}

res = updelta.load(src)
steps["load"] = "torch" in sys.modules
assert res.tensors["shape"].map(lambda s: isinstance(s, list)).all()

from updelta.report.text import summary_text
txt = summary_text(res)
assert "Whole model" in txt
steps["text"] = "torch" in sys.modules

from updelta.report.gates import evaluate_all, known_metrics, parse_gate
assert "stable_rank" in known_metrics() and "delta_cos" in known_metrics()
parse_gate("max:rel_delta<=0.5@component=attn")
outs = evaluate_all(res, ["rel_delta<=10", "max:sparsity_atol>=0@component=mlp", "delta_cos>-2"])
assert all(g.passed for g in outs), [g.describe() for g in outs]
steps["gates"] = "torch" in sys.modules

def cli(*args):
    sys.argv = ["updelta", *map(str, args)]
    try:
        main()
    except SystemExit as e:
        assert e.code in (0, None), (args, e.code)

cli("report", "--from", src, "--out", out / "report", "--gate", "rel_delta<=10", "--gate", "delta_cos>-2")
assert (out / "report" / "report.md").exists() and (out / "report" / "figures").is_dir()
steps["report"] = "torch" in sys.modules

cli("plot", src, "--kind", "heatmap", "--metric", "sparsity_atol", "--out", out / "heat.png")
cli("plot", src, "--kind", "run_similarity", "--out", out / "sim.png")
cli("plot", src, "--kind", "spectrum", "--out", out / "spec.png")
assert (out / "heat.png").stat().st_size > 0 and (out / "spec.png").stat().st_size > 0
steps["plot"] = "torch" in sys.modules
print(json.dumps(steps))
"""


def test_saved_results_need_no_torch(tmp_path):
    base = ckpt.llama_state()
    b = ckpt.save(base, tmp_path / "base")
    runs = {r: ckpt.save(ckpt.perturb(base, frac=f, seed=s), tmp_path / r) for r, f, s in (("a", 0.3, 1), ("b", 0.6, 2))}
    src = tmp_path / "cmp"
    updelta.compare(b, runs, spectral="fast").save(src)
    (tmp_path / "out").mkdir()
    env = {**os.environ, "UPDELTA_PROGRESS": "0", "MPLBACKEND": "Agg"}
    p = subprocess.run([sys.executable, "-c", SCRIPT, str(src), str(tmp_path / "out")], capture_output=True,
                       text=True, env=env, cwd=str(Path(updelta.__file__).parent.parent), timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    steps = json.loads(p.stdout.strip().splitlines()[-1])
    assert steps == {"load": False, "text": False, "gates": False, "report": False, "plot": False}
