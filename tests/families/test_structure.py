"""The model's map from transformers' own classes (updelta/families/structure.py, families/data.py;
docs/families.md, "Structure from transformers").

Tiny models of the architectures named in issue 26 are built with transformers from their shrunk default config
(benchmarks/arch_models.py), saved with `save_pretrained` and paired; each tensor's expected component is written
by hand below (a table of name patterns per architecture), not derived by the code under test, and every tensor
must be explained by exactly one row of its table.
"""
from __future__ import annotations

import json
import re
import sys
import time
from pathlib import Path

import pytest

from updelta.families import naming
from updelta.families import data
from updelta.io import open_checkpoint
from updelta.options import DiffOptions
from updelta.scan.pairing import pair_checkpoints

transformers = pytest.importorskip("transformers")
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import arch_models

ATTN, MLP, ROUTER, NORM, EMBED, HEAD, SSM = "attn", "mlp", "router", "norm", "embed", "head", "ssm"
LLAMA_ATTN = [(r"self_attn\.[qkvo]_proj\.(weight|bias)$", ATTN), (r"self_attn\.[qk]_norm\.weight$", NORM)]
TOP = [(r"^(model\.)?embed_tokens\.weight$", EMBED), (r"^(model\.)?norm\.(weight|bias)$", NORM),
       (r"^lm_head\.weight$", HEAD), (r"layers\.\d+\.(input|post_attention)_layernorm\.weight$", NORM)]

# model_type -> (hand table [(pattern, component)], expert-row patterns, config overrides)
HAND = {
    "starcoder2": (TOP + LLAMA_ATTN + [(r"mlp\.c_(fc|proj)\.(weight|bias)$", MLP),
                                       (r"(input|post_attention)_layernorm\.bias$", NORM), (r"norm\.bias$", NORM)],
                   [], {}),
    "exaone4": (TOP + LLAMA_ATTN + [(r"mlp\.(gate|up|down)_proj\.weight$", MLP),
                                    (r"post_feedforward_layernorm\.weight$", NORM)], [], {}),
    "glm": (TOP + LLAMA_ATTN + [(r"mlp\.(gate_up|down)_proj\.weight$", MLP)], [], {}),
    "bart": ([(r"decoder\.embed_(tokens|positions)\.weight$", EMBED),
              (r"(self_attn|encoder_attn)\.(q|k|v|out)_proj\.(weight|bias)$", ATTN),
              (r"fc[12]\.(weight|bias)$", MLP),
              (r"(layernorm_embedding|self_attn_layer_norm|encoder_attn_layer_norm|final_layer_norm)\.(weight|bias)$",
               NORM)], [], {}),
    "gpt_oss": (TOP + LLAMA_ATTN + [(r"self_attn\.sinks$", ATTN), (r"mlp\.router\.(weight|bias)$", ROUTER),
                                    (r"mlp\.experts\.(gate_up|down)_proj(_bias)?$", MLP)],
                [r"mlp\.experts\."], {}),
    "granitemoe": (TOP + LLAMA_ATTN + [(r"block_sparse_moe\.router\.layer\.weight$", ROUTER),
                                       (r"block_sparse_moe\.(input|output)_linear\.weight$", MLP)],
                   [r"_linear"], {}),
    "jamba": (TOP + [(r"final_layernorm\.weight$", NORM), (r"pre_ff_layernorm\.weight$", NORM),
                     (r"mamba\.(A_log|D|conv1d\.(weight|bias)|(in|x|dt|out)_proj\.(weight|bias))$", SSM),
                     (r"mamba\.[bcd]t?_layernorm\.weight$", NORM),
                     (r"feed_forward\.router\.weight$", ROUTER),
                     (r"feed_forward\.(experts\.\d+\.)?(gate|up|down)_proj\.weight$", MLP)] + LLAMA_ATTN,
              [r"feed_forward\.experts\."], {}),
    "qwen3_next": (TOP + LLAMA_ATTN + [
        (r"linear_attn\.(A_log|dt_bias|conv1d\.weight|in_proj_(ba|qkvz)\.weight|out_proj\.weight)$", ATTN),
        (r"linear_attn\.norm\.weight$", NORM), (r"mlp\.gate\.weight$", ROUTER), (r"mlp\.shared_expert_gate\.weight$",
                                                                                ROUTER),
        (r"mlp\.(experts\.\d+\.|shared_expert\.)?(gate|up|down)_proj\.weight$", MLP)], [r"mlp\.experts\."], {}),
    "mamba": ([(r"embeddings\.weight$", EMBED), (r"norm(_f)?\.weight$", NORM),
               (r"mixer\.(A_log|D|conv1d\.(weight|bias)|(in|x|dt|out)_proj\.(weight|bias))$", SSM)], [], {}),
    "ernie4_5_moe": (TOP + LLAMA_ATTN + [(r"mlp\.gate\.weight$", ROUTER),
                                         (r"mlp\.moe_statics\.e_score_correction_bias$", ROUTER),
                                         (r"mlp\.(experts\.\d+\.|shared_experts\.)?(gate|up|down)_proj\.weight$", MLP)],
                     [r"mlp\.experts\."], {}),
    "deepseek_v32": (TOP + [(r"self_attn\.(q_a_proj|q_b_proj|kv_a_proj_with_mqa|kv_b_proj|o_proj)\.weight$", ATTN),
                            (r"self_attn\.(q_a|kv_a)_layernorm\.weight$", NORM),
                            (r"self_attn\.indexer\.(wq_b|wk|weights_proj)\.weight$", ATTN),
                            (r"self_attn\.indexer\.k_norm\.(weight|bias)$", NORM),
                            (r"mlp\.gate\.(weight|e_score_correction_bias)$", ROUTER),
                            (r"mlp\.(experts\.\d+\.|shared_experts\.)?(gate|up|down)_proj\.weight$", MLP)],
                     [r"mlp\.experts\."], {}),
    "llama4_text": (TOP + LLAMA_ATTN + [(r"feed_forward\.router\.weight$", ROUTER),
                                        (r"feed_forward\.experts\.(gate_up|down)_proj$", MLP),
                                        (r"feed_forward\.shared_expert\.(gate|up|down)_proj\.weight$", MLP)],
                    [r"feed_forward\.experts\."], {}),
    "aria_text": (TOP + LLAMA_ATTN + [(r"mlp\.router\.weight$", ROUTER), (r"mlp\.experts\.fc[12]\.weight$", MLP),
                                      (r"mlp\.shared_experts\.(gate|up|down)_proj\.weight$", MLP)],
                  [r"mlp\.experts\."], {}),
    "nemotron_h": ([(r"embeddings\.weight$", EMBED), (r"^lm_head\.weight$", HEAD), (r"norm(_f)?\.weight$", NORM),
                    (r"mixer\.(A_log|D|dt_bias|conv1d\.(weight|bias)|(in|out)_proj\.weight)$", SSM),
                    (r"mixer\.norm\.weight$", NORM), (r"mixer\.[qkvo]_proj\.weight$", ATTN),
                    (r"mixer\.gate\.(weight|e_score_correction_bias)$", ROUTER),
                    (r"mixer\.(experts\.\d+\.|shared_experts\.)?(up|down)_proj\.weight$", MLP)],
                   [r"mixer\.experts\."], {}),
    "mllama": (TOP + LLAMA_ATTN + [(r"cross_attn\.[qkvo]_proj\.weight$", ATTN), (r"cross_attn\.[qk]_norm\.weight$",
                                                                                  NORM),
                                   (r"cross_attn_(attn|mlp)_gate$", ATTN),
                                   (r"mlp\.(gate|up|down)_proj\.weight$", MLP)], [],
               {"cross_attention_layers": [1]}),
}


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("arch")


def build(model_type: str, root: Path, overrides: dict) -> Path:
    """A tiny saved model (base and perturbed run) of `model_type`, `overrides` set on its shrunk config."""
    if not overrides:
        st = arch_models.build(model_type, root)
        assert st["ok"], st.get("why")
        return Path(st["dir"])
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM
    cfg = arch_models.shrink(AutoConfig.for_model(model_type))
    for k, v in overrides.items():
        for c in (cfg, getattr(cfg, "text_config", None)):
            if c is not None and hasattr(c, k):
                setattr(c, k, v)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg)
    out = root / f"{model_type}-custom"
    model.save_pretrained(out / "base")
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01)
    model.save_pretrained(out / "run")
    return out


def _pair(d: Path):
    return pair_checkpoints(open_checkpoint(d / "base"), {"run": open_checkpoint(d / "run")}, DiffOptions())


@pytest.mark.parametrize("model_type", sorted(HAND))
def test_named_architectures_match_the_hand_tables(model_type, cache, monkeypatch):
    monkeypatch.setenv("UPDELTA_CACHE_DIR", str(cache / "ucache"))
    table, expert_rows, overrides = HAND[model_type]
    p = _pair(build(model_type, cache, overrides))
    assert p.notes["structure"].startswith(f"transformers {transformers.__version__} classes"), p.notes
    seen_cross = False
    for t in p.tensors:
        stored = t.base.name
        hits = [c for pat, c in table if re.search(pat, stored)]
        assert len(set(hits)) == 1, f"{model_type}: {stored} is explained by {hits} rows of the hand table"
        assert t.info.component == hits[0], f"{model_type}: {t.name} is {t.info.component}, expected {hits[0]}"
        if any(re.search(e, stored) for e in expert_rows):
            assert t.info.expert is not None, f"{model_type}: expert row {t.name} has no expert index"
        else:
            assert t.info.expert is None, t.name
        if t.info.layer is None:
            assert not re.search(r"layers\.\d+\.", stored), t.name
        else:
            assert f"layers.{t.info.layer}." in stored
        seen_cross = seen_cross or "cross_attn." in stored
    if model_type == "mllama":
        assert seen_cross
    assert not [t.name for t in p.tensors if t.info.component == "other"]


def test_gpt_oss_expert_rows_one_per_expert_biases_included(cache, monkeypatch):
    monkeypatch.setenv("UPDELTA_CACHE_DIR", str(cache / "ucache"))
    p = _pair(build("gpt_oss", cache, {}))
    n_exp = json.loads((cache / "gpt_oss" / "base" / "config.json").read_text())["num_local_experts"]
    rows = [t for t in p.tensors if t.info.layer == 0 and t.info.expert is not None]
    got = {(t.info.module, t.info.param, t.info.expert) for t in rows}
    want = {(m, prm, e) for m in ("experts.gate_up_proj", "experts.down_proj") for prm in ("weight", "bias")
            for e in range(n_exp)}
    assert got == want
    bias = next(t for t in rows if t.info.param == "bias" and t.info.module == "experts.down_proj")
    assert len(bias.base.shape) == 1  # one [C] bias row per expert, not the stacked [E, C]
    assert {t.info.module for t in p.tensors if t.info.component == "attn" and t.info.layer == 0} >= {"sinks"}


@pytest.mark.parametrize("model_type", ["gptj", "codegen"])
def test_generic_fallback_head_rule(model_type, cache):
    d = build(model_type, cache, {})
    names = list(open_checkpoint(d / "base").tensors)
    m = naming.resolve_family(names, None)  # no config.json: the family files only
    assert m.family.name == "generic"
    for n in names:
        info = naming.parse(n, m.family)
        if n.startswith("lm_head."):
            assert info.component == "head", n
    assert naming.parse("output.weight", naming.family("generic")).component == "head"
    assert naming.parse("layers.0.attention.output.weight", naming.family("generic")).component != "head"


def test_name_guess_that_leaves_tensors_unnamed_uses_generic_rules_with_a_note(cache):
    d = build("starcoder2", cache, {})
    names = list(open_checkpoint(d / "base").tensors)
    m = naming.resolve_family(names, None)  # llama's detect pattern matches, but llama has no mlp.c_fc
    assert m.family.name == "generic" and "llama" in m.note and "not certain" in m.note
    assert naming.parse("model.layers.0.mlp.c_fc.weight", m.family).component == "mlp"


def test_clean_families_keep_their_family_json(cache, monkeypatch):
    monkeypatch.setenv("UPDELTA_CACHE_DIR", str(cache / "ucache"))
    for mt, fam in [("llama", "llama"), ("qwen2_moe", "qwen2_moe"), ("mixtral", "mixtral"), ("gpt2", "gpt2"),
                    ("phi3", "phi3"), ("olmo2", "olmo2")]:
        st = arch_models.build(mt, cache)
        if not st["ok"]:
            continue
        ck = open_checkpoint(Path(st["dir"]) / "base")
        m = naming.resolve_family(list(ck.tensors), ck.config)
        assert (m.family.name, m.origin, m.structure) == (fam, f"family JSON {fam}", None)


# ---------------------------------------------------------------------------------------------- hostile configs


def _names(cache) -> tuple[list[str], dict]:
    d = build("starcoder2", cache, {})
    ck = open_checkpoint(d / "base")
    return list(ck.tensors), dict(ck.config)


@pytest.mark.parametrize("change,why", [
    ({"auto_map": {"AutoModelForCausalLM": "evil.Model"}}, "auto_map"),
    ({"model_type": "no_such_model_type_xyz"}, "unknown to transformers"),
])
def test_hostile_configs_fall_back_with_a_note(cache, monkeypatch, change, why):
    monkeypatch.setenv("UPDELTA_CACHE_DIR", str(cache / "ucache-hostile"))
    names, cfg = _names(cache)
    names = names + ["model.layers.0.mlp.extra_thing.weight"]  # not in the shipped data: forces a live build
    m = naming.resolve_family(names, {**cfg, **change})
    assert m.structure is None and why in (m.note or ""), m
    assert m.family.name == "generic"  # llama's rules are not applied on a guess (starcoder2's c_fc)


def test_malformed_config_keeps_the_shipped_data_with_a_note(cache, monkeypatch):
    monkeypatch.setenv("UPDELTA_CACHE_DIR", str(cache / "ucache-malformed"))
    names, cfg = _names(cache)
    m = naming.resolve_family(names + ["model.layers.0.mlp.extra_thing.weight"],
                              {**cfg, "num_attention_heads": "four"})
    assert m.structure.endswith("(shipped)") and "cannot read config.json" in m.note
    assert "Traceback" not in m.note


def test_absurd_layer_count_builds_the_checkpoints_own(cache, monkeypatch):
    monkeypatch.setenv("UPDELTA_CACHE_DIR", str(cache / "ucache-absurd"))
    names, cfg = _names(cache)
    names = names + ["model.layers.0.mlp.extra_thing.weight"]
    t0 = time.perf_counter()
    m = naming.resolve_family(names, {**cfg, "num_hidden_layers": 10 ** 9})
    assert time.perf_counter() - t0 < 60
    assert m.family.name == "starcoder2" and "derived" in m.structure
    assert "1 tensors have no place" in m.note  # the made-up tensor, and only it


def test_no_transformers_uses_shipped_data_or_family_json(cache, monkeypatch):
    monkeypatch.setenv(data.ENV_OFF, "1")
    names, cfg = _names(cache)
    m = naming.resolve_family(names, cfg)
    assert m.structure.endswith("(shipped)") and m.family.name == "starcoder2"
    m = naming.resolve_family(names + ["model.layers.0.mlp.extra_thing.weight"], cfg)
    assert "no live derivation" in (m.note or "")


# ---------------------------------------------------------------------------------------------- shipped data


SHIPPED_SAMPLE = ["starcoder2", "gpt_oss", "granitemoe", "jamba", "qwen3_next", "mamba", "bart", "falcon_h1"]


@pytest.mark.parametrize("model_type", SHIPPED_SAMPLE)
def test_shipped_data_agrees_with_the_live_derivation(model_type):
    import gen_families
    d = data.shipped(model_type)
    assert d is not None, f"no shipped data for {model_type}: run benchmarks/gen_families.py"
    shipped_v = re.match(r"\d+\.\d+", d["generated"]["transformers"]).group(0)
    if not transformers.__version__.startswith(shipped_v + "."):
        pytest.skip(f"shipped data is from transformers {shipped_v}, installed {transformers.__version__}")
    assert gen_families.generate(model_type)[0] == d


def test_shipped_data_has_no_torch_cost():
    """The shipped data is a JSON read: resolving a covered architecture imports neither torch nor transformers."""
    import subprocess
    code = ("import sys, json; from updelta.families import naming; "
            "m = naming.resolve_family(['model.layers.0.mlp.c_fc.weight', 'model.embed_tokens.weight'], "
            "{'model_type': 'starcoder2'}); "
            "print(json.dumps([m.family.name, m.structure, 'torch' in sys.modules, 'transformers' in sys.modules]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**__import__("os").environ, "UPDELTA_NO_TRANSFORMERS": "1"})
    name, where, torch_loaded, tf_loaded = json.loads(out.stdout.strip().splitlines()[-1])
    assert (name, torch_loaded, tf_loaded) == ("starcoder2", False, False) and where.endswith("(shipped)")


def test_in_memory_state_dict_of_transformers_5_is_named(cache, monkeypatch):
    """A transformers 5 model in memory holds fused, stacked expert tensors (mlp.experts.gate_up_proj [E, 2I, H]):
    the map from the classes names them too, one row per expert (docs/experts.md)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from updelta.families.experts import split
    from updelta.io import TensorRef
    monkeypatch.setenv("UPDELTA_CACHE_DIR", str(cache / "ucache-mem"))
    cfg = arch_models.shrink(AutoConfig.for_model("ernie4_5_moe"))
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(cfg)
    sd = model.state_dict()
    assert "model.layers.1.mlp.experts.gate_up_proj" in sd
    m = naming.resolve_family(list(sd), cfg.to_dict())
    assert m.structure.startswith("transformers") and naming.unnamed(m.family, list(sd)) == []
    ref = TensorRef("model.layers.1.mlp.experts.gate_up_proj", "float32", tuple(sd["model.layers.1.mlp.experts.gate_up_proj"]
                                                                          .shape), None)
    slices, s = split(ref, m.family)
    assert s.experts == cfg.moe_num_experts and len(slices) == cfg.moe_num_experts
    infos = [naming.parse(n, m.family) for n in slices]
    assert [i.expert for i in infos] == list(range(cfg.moe_num_experts))
    assert {(i.component, i.module, i.layer) for i in infos} == {("mlp", "experts.gate_up_proj", 1)}


def test_gpt_oss_per_expert_bias_rows_have_the_exact_numbers(cache, monkeypatch):
    """The 1-D per-expert slices of a stacked [E, C] bias read exactly expert e's row (float64 recomputation)."""
    import numpy as np
    from safetensors.numpy import load_file

    import updelta
    monkeypatch.setenv("UPDELTA_CACHE_DIR", str(cache / "ucache"))
    d = build("gpt_oss", cache, {})
    res = updelta.diff(d / "base", d / "run", spectral="off")
    w0 = load_file(str(d / "base" / "model.safetensors"))
    w1 = load_file(str(d / "run" / "model.safetensors"))
    rows = res.tensors[(res.tensors["module"] == "experts.gate_up_proj") & (res.tensors["param"] == "bias")]
    assert len(rows) == 2 * w0["model.layers.0.mlp.experts.gate_up_proj_bias"].shape[0]  # 2 layers x E experts
    for _, r in rows.iterrows():
        name = f"model.layers.{int(r['layer'])}.mlp.experts.gate_up_proj_bias"
        e = int(r["expert"])
        a, b = w0[name][e].astype(np.float64), w1[name][e].astype(np.float64)
        assert r["delta_fro"] == pytest.approx(np.linalg.norm(b - a), rel=1e-6)
        assert r["delta_max"] == pytest.approx(np.abs(b - a).max(), rel=1e-6)
        assert np.linalg.norm(b - a) > 0  # the planted noise reached every expert's row
