"""Model families: detection from config.json and from tensor names, and the classification of every tensor of a
real (tiny) transformers checkpoint of each family the package ships.

The expected component, module and layer of each tensor come from the model itself, not from the family files:
the class of the module that owns the parameter (an Embedding, a *Norm, inside an *Attention or an *MLP/*MoE
block), the index in the first ModuleList on its path, and its attribute name.
"""
from __future__ import annotations

import json
import re
import warnings

import pytest
import torch

from updelta.families import naming
from updelta.io import open_checkpoint
from updelta.options import DiffOptions
from updelta.scan.pairing import pair_checkpoints

transformers = pytest.importorskip("transformers")

SMALL = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2, vocab_size=64)
MOE = dict(num_experts_per_tok=1)
MLA = dict(n_routed_experts=2, moe_intermediate_size=8, n_shared_experts=1, first_k_dense_replace=1, q_lora_rank=8,
           kv_lora_rank=8, qk_rope_head_dim=4, qk_nope_head_dim=4, v_head_dim=4, n_group=1, topk_group=1,
           num_key_value_heads=1, **MOE)

# case -> (config class, extra kwargs, family from config.json, family from names alone)
CASES = {
    "llama": ("LlamaConfig", dict(num_key_value_heads=1), "llama", "llama"),
    "mistral": ("MistralConfig", dict(num_key_value_heads=1), "llama", "llama"),
    "qwen2": ("Qwen2Config", dict(num_key_value_heads=1), "llama", "llama"),
    "qwen3": ("Qwen3Config", dict(num_key_value_heads=1, head_dim=8), "llama", "llama"),
    "gemma": ("GemmaConfig", dict(num_key_value_heads=1, head_dim=8), "llama", "llama"),
    "gemma2": ("Gemma2Config", dict(num_key_value_heads=1, head_dim=8), "llama", "llama"),
    "gemma3_text": ("Gemma3TextConfig", dict(num_key_value_heads=1, head_dim=8), "llama", "llama"),
    "olmo2": ("Olmo2Config", dict(num_key_value_heads=1), "olmo2", "llama"),
    "phi3": ("Phi3Config", dict(pad_token_id=0), "phi3", "phi3"),
    "phi": ("PhiConfig", {}, "phi", "phi"),
    "gpt2": ("GPT2Config", dict(n_embd=16, n_layer=2, n_head=2, n_positions=32), "gpt2", "gpt2"),
    "gpt_neox": ("GPTNeoXConfig", {}, "gpt_neox", "gpt_neox"),
    "falcon": ("FalconConfig", {}, "falcon", "falcon"),
    "falcon_new": ("FalconConfig", dict(new_decoder_architecture=True, num_kv_heads=1), "falcon", "falcon"),
    "falcon_serial": ("FalconConfig", dict(parallel_attn=False, bias=True), "falcon", "falcon"),
    "bloom": ("BloomConfig", dict(n_layer=2, n_head=2), "bloom", "bloom"),
    "opt": ("OPTConfig", dict(ffn_dim=32, word_embed_proj_dim=16, max_position_embeddings=32), "opt", "opt"),
    "opt_proj": ("OPTConfig", dict(ffn_dim=32, word_embed_proj_dim=8, max_position_embeddings=32,
                                   do_layer_norm_before=False), "opt", "opt"),
    "mixtral": ("MixtralConfig", dict(num_local_experts=2, num_key_value_heads=1, **MOE), "mixtral", "mixtral"),
    "qwen2_moe": ("Qwen2MoeConfig", dict(num_experts=2, moe_intermediate_size=8, shared_expert_intermediate_size=8,
                                         num_key_value_heads=1, **MOE), "qwen2_moe", "qwen2_moe"),
    "qwen3_moe": ("Qwen3MoeConfig", dict(num_experts=2, moe_intermediate_size=8, head_dim=8, num_key_value_heads=1,
                                         **MOE), "qwen2_moe", "qwen2_moe"),
    "deepseek_v2": ("DeepseekV2Config", dict(MLA, q_lora_rank=None), "deepseek", "deepseek"),  # q_proj, no q LoRA
    "deepseek_v3": ("DeepseekV3Config", MLA, "deepseek", "deepseek"),
}
# every family file must be exercised by a case here
SHIPPED = {f.name for f in naming.families()} - {naming.GENERIC, "bert", "roberta", "gguf"}  # encoders: tests/families/; gguf: tests/io/test_gguf.py

_built: dict = {}


def _tiny(case: str, tmp_path_factory):
    """(model, saved folder) of a tiny random model of `case`, built once per test session."""
    if case not in _built:
        cls, extra, _, _ = CASES[case]
        torch.manual_seed(0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            cfg = getattr(transformers, cls)(**{**SMALL, **extra})
            model = transformers.AutoModelForCausalLM.from_config(cfg)
        out = tmp_path_factory.mktemp(case)
        model.save_pretrained(out)
        _built[case] = (model, out)
    return _built[case]


def _oracle(model, name: str) -> tuple[str, str, int | None]:
    """(component, module, layer) of in-memory parameter `name`, read off the module tree."""
    parts = name.split(".")
    mods = [model]
    for p in parts[:-1]:
        mods.append(mods[-1][int(p)] if p.isdigit() else getattr(mods[-1], p))
    owner, attr = mods[-1], parts[-1]
    bare = attr not in ("weight", "bias")  # a stacked-experts parameter: its own name is the module
    leaf = attr if bare else parts[-2]
    layer = next((int(parts[i]) for i, m in enumerate(mods[:-1]) if isinstance(m, torch.nn.ModuleList)), None)
    classes = [type(m).__name__ for m in mods[1:]]
    if not bare and "Norm" in type(owner).__name__:
        comp = "norm"
    elif not bare and isinstance(owner, torch.nn.Embedding):
        comp = "embed"
    elif leaf in ("lm_head", "embed_out", "project_out"):
        comp = "head"
    elif leaf == "project_in":
        comp = "embed"
    elif any("Attention" in c for c in classes):
        comp = "attn"
    elif any(k in c for c in classes for k in ("MLP", "SparseMoe", "Experts", "Router")) or leaf in ("fc1", "fc2"):
        comp = "mlp"
    else:
        comp = "?"
    # MoE (docs/experts.md): routing tensors are component router; modules router, experts.<name>,
    # shared_expert.<name> (Qwen2-MoE), shared_experts.<name> (DeepSeek)
    if "Router" in type(owner).__name__ or leaf == "shared_expert_gate":
        comp = "router"
    if "Router" in type(owner).__name__:
        leaf = "router"
    elif "Experts" in type(owner).__name__:
        leaf = f"experts.{leaf}"
    elif len(parts) > 2 and parts[-3] in ("shared_expert", "shared_experts"):
        leaf = f"{parts[-3]}.{leaf}"
    return comp, leaf, layer


# names save_pretrained writes that no module of the transformers 5 model has: (component, module) by regex
SAVED_ONLY = [
    (r"layers\.(\d+)\.(?:block_sparse_moe|mlp)\.experts\.\d+\.(\w+)\.weight$", "mlp", "experts.{1}"),  # MoE
    (r"layers\.(\d+)\.block_sparse_moe\.gate\.weight$", "router", "router"),  # Mixtral's router on disk
    (r"layers\.(\d+)\.mlp\.gate\.e_score_correction_bias$", "router", "router"),  # DeepSeek-V3's buffer
    (r"^()embed_out\.weight$", "head", "embed_out"),  # GPT-NeoX's head (lm_head in memory)
]


def _expected_saved(name: str) -> tuple[str, str, int | None]:
    for pattern, comp, module in SAVED_ONLY:
        m = re.search(pattern, name)
        if m:
            return comp, module.format(*m.groups()), int(m.group(1)) if m.group(1) else None
    raise AssertionError(f"{name}: neither a parameter of the model nor a known on-disk name")


@pytest.mark.parametrize("case", list(CASES))
def test_tiny_model_detected_and_every_tensor_classified(case, tmp_path_factory):
    model, folder = _tiny(case, tmp_path_factory)
    _, _, fam_cfg, fam_names = CASES[case]
    ck = open_checkpoint(folder)
    names = list(ck.tensors)
    m = naming.resolve_family(names, ck.config)
    assert (m.family.name, m.source) == (fam_cfg, "config.json architectures")
    alone = naming.resolve_family(names)  # config.json removed
    assert (alone.family.name, alone.source) == (fam_names, "tensor names")
    # no tie at the top: the winning family is the only one of its priority whose pattern matches
    hits = [f for f in naming.families() if f.detect is not None and any(f.detect.search(n) for n in names)]
    assert [f.name for f in hits if f.priority == hits[0].priority] == [fam_names]

    fam = m.family
    in_memory = dict(model.named_parameters())
    order = naming.module_order(fam.name)
    assert order, fam.name
    for n in names:
        got = naming.parse(n, fam)
        want = _oracle(model, n) if n in in_memory else _expected_saved(n)
        assert (got.component, got.module, got.layer) == want, n
        assert got.component != "other" and got.module in order, n
        assert got.param == n.rsplit(".", 1)[1], n


IN_MEMORY_FAMILY = {"qwen3_moe": "mixtral"}  # stacked experts, no shared expert: the names are Mixtral's


@pytest.mark.parametrize("case", list(CASES))
def test_in_memory_state_dict_classified(case, tmp_path_factory):
    """A torch.save of a transformers 5 state dict (what `updelta` reads from a .bin/.pt): MoE experts stacked
    [E, out, in] under names without '.weight', GPT-NeoX's head called lm_head. Same checks, names only."""
    model, _ = _tiny(case, tmp_path_factory)
    names = list(model.state_dict())
    fam = naming.detect_family(names)
    assert fam.name == IN_MEMORY_FAMILY.get(case, CASES[case][3])
    for n in names:
        got = naming.parse(n, fam)
        assert (got.component, got.module, got.layer) == _oracle(model, n), n
        assert got.module in naming.module_order(fam.name), n
    stacked = [n for n in names if n.endswith("experts.gate_up_proj")]
    if stacked:
        p = naming.parse(stacked[0], fam)
        assert (p.component, p.module, p.param) == ("mlp", "experts.gate_up_proj", "weight")


@pytest.mark.parametrize("case", [c for c in CASES if CASES[c][0] not in ("GPTNeoXConfig",)])
def test_tied_heads_declared_where_the_model_ties_them(case, tmp_path_factory):
    model, folder = _tiny(case, tmp_path_factory)
    ck = open_checkpoint(folder)
    tied = bool(model.config.tie_word_embeddings)
    head_saved = any(naming.canonical(n) in {h for h, _ in naming.detect_family(ck.tensors, ck.config).tied}
                     for n in ck.tensors)
    assert head_saved == (not tied), case
    p = pair_checkpoints(ck, {"ft": open_checkpoint(folder)}, DiffOptions())
    assert p.notes["family_source"] == "config.json architectures"
    both = [t for t in p.notes["tied"] if t["side"] == "both"]
    if tied:
        emb = model.get_input_embeddings().weight
        emb_name = next(n for n, t in model.named_parameters() if t is emb)
        assert [t["to"] for t in both] == [emb_name], p.notes["tied"]
    else:
        assert both == []


def test_every_shipped_family_has_a_tiny_model_case():
    assert SHIPPED == {fam for _, _, fam, _ in CASES.values()}


def test_family_files_are_consistent():
    comps = naming.components()
    assert comps == ("embed", "attn", "ssm", "router", "mlp", "norm", "head", "other")
    seen: dict[str, str] = {}
    for fam in naming.families():
        assert all(r.component in comps for r in fam.modules)
        assert len(set(fam.module_order)) == len(fam.module_order), fam.name
        for v in fam.architectures + fam.model_types:
            assert v not in seen, f"{v} claimed by {seen.get(v)} and {fam.name}"
            seen[v] = fam.name
    assert naming.families()[-1].name == naming.GENERIC
    prios = [f.priority for f in naming.families()[:-1]]
    assert prios == sorted(prios, reverse=True)
    assert naming.family("phi3").priority > naming.family("llama").priority


def test_module_order_forward():
    order = naming.module_order("llama")
    idx = [order.index(m) for m in ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")]
    assert idx == sorted(idx)
    assert naming.module_order("no-such-family") == []
    with pytest.raises(naming.UpdeltaError):
        naming.family("no-such-family")


PHI3_NAMES = ["model.layers.0.self_attn.o_proj.weight", "model.layers.0.self_attn.qkv_proj.weight",
              "model.layers.0.mlp.gate_up_proj.weight", "model.layers.0.mlp.down_proj.weight"]


@pytest.mark.parametrize("config", [
    None, [], "phi3", 42, 1.5, {}, {"architectures": None}, {"architectures": [1, None]}, {"architectures": {"a": 1}},
    {"model_type": ["llama"]}, {"text_config": "llama"}, {"text_config": [1]},
    {"architectures": ["NoSuchModel"], "model_type": "nope"}])
def test_config_of_any_content_falls_back_to_names(config):
    m = naming.resolve_family(PHI3_NAMES, config)
    assert (m.family.name, m.source) == ("phi3", "tensor names")


def test_config_sources_and_text_config():
    assert naming.resolve_family(PHI3_NAMES, {"architectures": "Phi3ForCausalLM"}).source == "config.json architectures"
    m = naming.resolve_family(PHI3_NAMES, {"model_type": "phi3"})
    assert (m.family.name, m.source, m.claimed) == ("phi3", "config.json model_type", "phi3")
    llama = ["model.layers.0.self_attn.q_proj.weight", "model.layers.0.mlp.gate_proj.weight"]
    m = naming.resolve_family(llama, {"architectures": ["SomeVLM"], "text_config": {"model_type": "qwen2"}})
    assert (m.family.name, m.source) == ("llama", "config.json text_config.model_type")
    m = naming.resolve_family(["blocks.0.attn.qkv.weight"], None)
    assert (m.family.name, m.source) == ("generic", "fallback")


def test_config_contradicted_by_names_is_set_aside():
    m = naming.resolve_family(PHI3_NAMES, {"architectures": ["LlamaForCausalLM"]})
    assert (m.family.name, m.source, m.rejected) == ("phi3", "tensor names", "llama")
    # names that point nowhere do not contradict config.json (e.g. a checkpoint of MLP weights only)
    mlp_only = ["model.layers.0.mlp.gate_proj.weight", "model.layers.0.mlp.down_proj.weight"]
    m = naming.resolve_family(mlp_only, {"model_type": "mistral"})
    assert (m.family.name, m.source, m.rejected) == ("llama", "config.json model_type", None)


def test_real_phi3_names_are_not_read_as_llama(tmp_path_factory):
    """The review's case: llama's pattern matches Phi-3's o_proj; a full save_pretrained name set must be phi3."""
    _, folder = _tiny("phi3", tmp_path_factory)
    names = list(open_checkpoint(folder).tensors)
    assert any(".o_proj." in n for n in names)
    fam = naming.detect_family(names)
    assert fam.name == "phi3"
    comps = {n: naming.parse(n, fam).component for n in names}
    assert "other" not in comps.values()
    assert comps["model.layers.1.self_attn.qkv_proj.weight"] == "attn"
    assert comps["model.layers.1.mlp.gate_up_proj.weight"] == "mlp"


@pytest.mark.parametrize("content", ["[1, 2]", "\"llama\"", "not json {", "{\"architectures\": 3}"])
def test_bad_config_json_file_never_crashes_pairing(content, tmp_path_factory, tmp_path):
    import shutil
    _, folder = _tiny("phi3", tmp_path_factory)
    shutil.copytree(folder, tmp_path / "m")
    (tmp_path / "m" / "config.json").write_text(content)
    ck = open_checkpoint(tmp_path / "m")
    p = pair_checkpoints(ck, {"ft": open_checkpoint(tmp_path / "m")}, DiffOptions())
    assert (p.family, p.notes["family_source"]) == ("phi3", "tensor names")


def test_invalid_family_file_is_a_one_line_error():
    bad = {"name": "x", "layer": "(", "modules": []}
    with pytest.raises(naming.UpdeltaError, match=r"x\.json: not a valid family file"):
        naming.Family.from_json(bad, "x.json")
    bad = {"name": "x", "layer": "(\\d+)", "modules": [{"pattern": "a", "component": "routers"}]}
    with pytest.raises(naming.UpdeltaError, match="component 'routers'"):
        naming.Family.from_json(bad, "x.json")


def test_config_file_written_by_save_pretrained_is_what_is_read(tmp_path_factory):
    _, folder = _tiny("qwen3_moe", tmp_path_factory)
    cfg = json.loads((folder / "config.json").read_text())
    assert open_checkpoint(folder).config["architectures"] == cfg["architectures"] == ["Qwen3MoeForCausalLM"]
