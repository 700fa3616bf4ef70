"""The architecture sweep as a test (benchmarks/bench_arch_sweep.py; docs/families.md, "Structure from
transformers"): tiny models of transformers' causal-LM architectures, saved and paired; no weight of an attention,
MLP, expert, router, state-space mixer or embedding module lands in `other`, every component is that of the owning
module class, expert rows carry their expert index, a heads table exists where the config has heads and the shapes
agree (else the note says why).

CI runs a representative subset (one of each kind of layout); `UPDELTA_ARCH_SWEEP=all` runs every architecture of
the installed transformers' causal-LM auto mapping that builds from a shrunk default config (those that do not are
listed in docs/families.md). Tiny models are cached under `$ARCH_CACHE` when set, else in pytest's tmp folder.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

pytest.importorskip("transformers")
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import arch_models
import bench_arch_sweep

SUBSET = ["llama", "qwen2_moe", "mixtral", "gpt2", "phi3", "falcon", "starcoder2", "exaone4", "glm4", "cohere",
          "gpt_oss", "granitemoe", "jamba", "llama4_text", "aria_text", "qwen3_next", "mamba", "falcon_mamba",
          "nemotron_h", "zamba2", "falcon_h1", "deepseek_v32", "ernie4_5_moe", "glm4_moe", "dbrx", "olmoe",
          "bart", "whisper", "xglm", "gptj", "codegen", "gpt_bigcode", "bitnet", "recurrent_gemma", "moshi"]
# Hand-written family files keep their own (documented) choice for the masked-LM head's transform norm.
KNOWN = {"bert": "cls.predictions.transform.LayerNorm", "roberta": "lm_head.layer_norm"}
# No heads table although q_proj weights exist (listed in docs/families.md): a fused gqkv_proj (hrm_text), attention
# classes whose model name contains "Linear" and are read as linear attention (kimi_linear), an attention whose
# q projection is not q_proj in every layer (minicpm5_moe).
NO_HEADS = {"hrm_text", "kimi_linear", "minicpm5_moe"}


def _types() -> list[str]:
    if os.environ.get("UPDELTA_ARCH_SWEEP") == "all":
        return arch_models.causal_lm_types()
    return SUBSET


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    root = Path(os.environ.get("ARCH_CACHE") or tmp_path_factory.mktemp("sweep"))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("UPDELTA_CACHE_DIR", str(tmp_path_factory.mktemp("ucache")))
        mp.setattr(bench_arch_sweep, "ROOT", root)
        bench_arch_sweep._quiet()
        types = _types()
        bench_arch_sweep.expect(types)
        yield bench_arch_sweep.measure(types, run_diff=False), root


@pytest.mark.parametrize("model_type", _types())
def test_architecture_map(swept, model_type):
    res, root = swept
    r = res["archs"][model_type]
    if not r["built"]:
        pytest.skip(f"{model_type} does not build from a shrunk default config: {r.get('why')}")
    assert r["paired"], r.get("why")
    exp = json.loads((root / model_type / "expected.json").read_text())
    assert "tensors" in exp, exp  # the classes were read
    known = KNOWN.get(r["family"])
    mis = [m for m in r["misclassified"] if not (known and known in m)]
    assert not mis, mis
    placed = [n for n in r["other"] if exp["tensors"].get(n, {}).get("component", "other") != "other"]
    assert not placed, f"weights of a known module in other: {placed}"
    assert not r["router_wrong"] and not r["expert_unindexed"], r
    if r["config_heads"] and not r["heads"]:
        note = (r["heads_note"] or {}).get("skipped", "")
        assert note, r["heads_note"]  # never silent
        if "does not fit" not in note and model_type not in NO_HEADS:  # shapes agree: a table is due unless there is no self-attention weight
            fam_attn = [k for k, v in exp["tensors"].items() if v["component"] == "attn"]
            assert not any(k.endswith(("q_proj.weight", "c_attn.weight", "qkv_proj.weight")) and "cross" not in k
                           and "indexer" not in k and "linear_attn" not in k for k in fam_attn), (model_type, note)
