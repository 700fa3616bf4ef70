"""Families beyond the decoder-only text models: a multimodal Gemma 3 (vision tower, projector, the language
model under `language_model.`, settings in `text_config`) and the BERT / RoBERTa encoders, each a tiny model built
with `transformers` and saved with `save_pretrained`; then a planted update on the vision tower only.

The expected tower, layer, component and module of each tensor come from the model's module tree (the class of the
module that owns the parameter, the first ModuleList on its path, the tower attribute it sits under), not from the
family files. Decoder-only families (OLMo 2, Gemma 2, Gemma 3 text, Falcon old and new architecture) are checked
the same way in tests/families/test_naming.py.
"""
from __future__ import annotations

import math
import shutil
import warnings

import pytest
import torch

import updelta
from updelta.families import naming
from updelta.errors import UpdeltaWarning
from updelta.report.gates import evaluate, parse_gate
from updelta.io import open_checkpoint
from updelta.options import DiffOptions
from updelta.scan.pairing import pair_checkpoints

transformers = pytest.importorskip("transformers")
safetensors_torch = pytest.importorskip("safetensors.torch")

SMALL = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2, vocab_size=64)


def _gemma3():
    text = transformers.Gemma3TextConfig(**SMALL, num_key_value_heads=1, head_dim=8)
    vision = transformers.SiglipVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                             num_attention_heads=2, image_size=16, patch_size=8)
    cfg = transformers.Gemma3Config(text_config=text, vision_config=vision, mm_tokens_per_image=4)
    return transformers.Gemma3ForConditionalGeneration(cfg)


def _bert(cls: str, config: str):
    return getattr(transformers, cls)(getattr(transformers, config)(**SMALL, max_position_embeddings=32))


BUILD = {
    "gemma3": _gemma3,
    "bert_pretraining": lambda: _bert("BertForPreTraining", "BertConfig"),  # pooler, MLM and NSP heads
    "bert_model": lambda: _bert("BertModel", "BertConfig"),  # no prefix, pooler
    "roberta_mlm": lambda: _bert("RobertaForMaskedLM", "RobertaConfig"),
    "roberta_cls": lambda: _bert("RobertaForSequenceClassification", "RobertaConfig"),
}
# case -> (family, family_source) from the saved config.json
EXPECTED_FAMILY = {"gemma3": ("llama", "config.json text_config.model_type"),
                   **{c: (c.split("_")[0], "config.json architectures") for c in BUILD if c != "gemma3"}}


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    """{case: (model, saved folder)}, built once per session."""
    out = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for case, build in BUILD.items():
            torch.manual_seed(0)
            model = build()
            folder = tmp_path_factory.mktemp(case)
            model.save_pretrained(folder)
            out[case] = (model, folder)
    return out


def _oracle(model, name: str) -> tuple[str | None, int | None, str, str, str]:
    """(tower, layer, component, module, param) of in-memory parameter `name`, read off the module tree."""
    parts = name.split(".")
    mods = [model]
    for p in parts[:-1]:
        mods.append(mods[-1][int(p)] if p.isdigit() else getattr(mods[-1], p))
    owner, attr = mods[-1], parts[-1]
    classes = [type(m).__name__ for m in mods[1:]]
    tower = "vision" if "vision_tower" in parts else "projector" if "multi_modal_projector" in parts else None
    layer = next((int(parts[i]) for i, m in enumerate(mods[:-1]) if isinstance(m, torch.nn.ModuleList)), None)
    bare = attr not in ("weight", "bias")  # in_proj_weight, mm_input_projection_weight, probe
    param = attr.rsplit("_", 1)[1] if bare and attr.endswith(("_weight", "_bias")) else attr
    if tower is None and any(k in c for c in classes for k in ("Pooler", "Head", "Classification")) \
            or parts[-2] == "lm_head":
        comp = "head"
    elif not bare and "Norm" in type(owner).__name__:
        comp = "norm"
    elif not bare and (isinstance(owner, torch.nn.Embedding) or "Embeddings" in type(mods[-2]).__name__):
        comp = "embed"
    elif tower == "projector":
        comp = "mlp"
    else:  # the innermost block: an attention (BERT's SelfOutput is the attention's output) or an MLP
        kinds = ["attn" if "Attention" in c or "SelfOutput" in c else
                 "mlp" if "MLP" in c or "Intermediate" in c or c.endswith("Output") else None for c in classes]
        comp = next((k for k in reversed(kinds) if k), "?")
    if bare:
        module = attr.rsplit("_", 1)[0] if param != attr else attr
    elif type(model).__name__.startswith(("Bert", "Roberta")):
        # encoders: the path inside the block (or below the wrapper), without attention.self. and embeddings.
        rel = parts[:-1]
        if layer is not None:
            rel = rel[rel.index(str(layer)) + 1:]
        elif rel[0] in ("bert", "roberta", "cls"):
            rel = rel[1:]
        module = ".".join(rel).removeprefix("attention.self.")
        if module.startswith("embeddings.") and comp == "embed":
            module = module.removeprefix("embeddings.")
    else:
        module = parts[-2]
    return tower, layer, comp, module, param


def _check_every_tensor(model, names, fam):
    """Every name parses to the oracle of the in-memory parameter with the same canonical name."""
    mem = {naming.canonical(n): n for n in model.state_dict()}
    order = naming.module_order(fam.name)
    for n in names:
        got = naming.parse(n, fam)
        want = _oracle(model, mem[naming.canonical(n)])
        assert (got.tower, got.layer, got.component, got.module, got.param) == want, n
        assert got.component != "other", n
        if got.tower is None:
            assert got.module in order, n


@pytest.mark.parametrize("case", list(BUILD))
def test_saved_and_in_memory_names_classified(case, tiny):
    model, folder = tiny[case]
    ck = open_checkpoint(folder)
    names = list(ck.tensors)
    m = naming.resolve_family(names, ck.config)
    assert (m.family.name, m.source) == EXPECTED_FAMILY[case]
    assert naming.resolve_family(names).family.name == m.family.name  # names alone, towers set aside
    in_memory = list(model.state_dict())
    assert naming.detect_family(in_memory).name == m.family.name
    _check_every_tensor(model, names, m.family)
    _check_every_tensor(model, in_memory, m.family)


def test_gemma3_layout(tiny):
    """transformers 5 saves language_model.model.layers.N and vision_tower.encoder.layers.N; in memory they are
    model.language_model.layers.N and model.vision_tower.encoder.layers.N: both pair by canonical name."""
    model, folder = tiny["gemma3"]
    ck = open_checkpoint(folder)
    assert ck.config["text_config"]["model_type"] == "gemma3_text"
    names = list(ck.tensors)
    assert "language_model.model.layers.0.self_attn.q_proj.weight" in names
    assert "vision_tower.encoder.layers.0.self_attn.out_proj.weight" in names  # OPT's name: not OPT
    parsed = {n: naming.parse(n, naming.family("llama")) for n in names}
    towers = {t.tower for t in parsed.values()}
    assert towers == {None, "vision", "projector"}
    vision0 = [n for n, t in parsed.items() if t.tower == "vision" and t.layer == 0]
    text0 = [n for n, t in parsed.items() if t.tower is None and t.layer == 0]
    assert vision0 and text0 and not set(vision0) & set(text0)
    assert all(n.startswith("vision_tower.encoder.layers.0.") for n in vision0)
    # Hub checkpoints of Gemma 3 keep the SigLIP wrapper: vision_tower.vision_model.encoder.layers.N
    hub = naming.parse("vision_tower.vision_model.encoder.layers.3.mlp.fc2.weight", naming.family("llama"))
    assert (hub.tower, hub.layer, hub.component, hub.module) == ("vision", 3, "mlp", "fc2")
    mem = {naming.canonical(n) for n in model.state_dict()}
    assert {naming.canonical(n) for n in names} <= mem  # lm_head (tied) is the only in-memory extra
    assert mem - {naming.canonical(n) for n in names} == {"lm_head.weight"}


@pytest.mark.parametrize("case", ["bert_pretraining", "roberta_mlm"])
def test_encoder_mlm_decoder_tied_to_word_embeddings(case, tiny):
    model, folder = tiny[case]
    ck = open_checkpoint(folder)
    p = pair_checkpoints(ck, {"ft": open_checkpoint(folder)}, DiffOptions())
    both = [t for t in p.notes["tied"] if t["side"] == "both"]
    emb = model.get_input_embeddings().weight
    assert model.get_output_embeddings().weight is emb
    assert [t["to"] for t in both] == [next(n for n, t in model.named_parameters() if t is emb)]


def test_bert_model_pairs_with_the_prefixed_pretraining_checkpoint(tiny):
    """BertModel (no prefix) against BertForPreTraining (bert. prefix): the encoder pairs tensor by tensor."""
    _, base = tiny["bert_model"]
    _, run = tiny["bert_pretraining"]
    p = pair_checkpoints(open_checkpoint(base), {"ft": open_checkpoint(run)}, DiffOptions())
    assert p.family == "bert" and len(p.tensors) == len(open_checkpoint(base).tensors)
    assert p.notes["only_in_base"]["ft"] == []
    assert sorted(p.notes["only_in_run"]["ft"]) == sorted(n for n in open_checkpoint(run).tensors
                                                          if n.startswith("cls."))


@pytest.fixture(scope="module")
def vision_only(tiny, tmp_path_factory):
    """(base folder, ft folder, {name: float64 delta}): Gemma 3 with vision layer 0's q_proj and the projector
    changed by planted values, the language model untouched."""
    _, folder = tiny["gemma3"]
    tmp = tmp_path_factory.mktemp("gemma3_vision")
    ft = tmp / "ft"
    shutil.copytree(folder, ft)
    (st,) = list(ft.glob("*.safetensors"))
    sd = safetensors_torch.load_file(str(st))
    g = torch.Generator().manual_seed(7)
    planted = {}
    for name in ("vision_tower.encoder.layers.0.self_attn.q_proj.weight",
                 "multi_modal_projector.mm_input_projection_weight"):
        w1 = (sd[name].double() + 1e-2 * torch.randn(sd[name].shape, generator=g, dtype=torch.float64)).float()
        planted[name] = w1.double() - sd[name].double()
        sd[name] = w1
    safetensors_torch.save_file(sd, str(st), metadata={"format": "pt"})
    return folder, ft, planted


def test_vision_update_is_not_a_text_update(vision_only):
    base, ft, planted = vision_only
    with pytest.warns(UpdeltaWarning, match=r"tensor\(s\) of towers \(projector 2, vision \d+\)"):
        r = updelta.diff(base, ft, spectral="off")
    t = r.tensors.set_index("name")
    assert set(t["tower"].dropna()) == {"vision", "projector"}
    for name, d in planted.items():  # the rows are there, with the planted numbers
        assert t.loc[name, "delta_fro"] == pytest.approx(float(d.norm()), rel=1e-6)
    text = t[t["tower"].isna()]
    assert (text["delta_fro"] == 0).all() and len(text) == len(r.tensors) - sum(r.meta["towers"]["tensors"].values())
    s = r.summary.iloc[0]
    assert s["delta_fro"] == 0 and s["sparsity_exact"] == 1 and s["n_tensors"] == len(text)
    assert s["numel"] == text["numel"].sum()
    assert (r.components["delta_fro"] == 0).all() and "tower" not in r.components
    lay0 = r.layers[r.layers["layer"] == 0]
    assert (lay0["delta_fro"] == 0).all()  # vision layer 0 is not text layer 0
    assert lay0["n_tensors"].sum() == ((text["layer"] == 0)).sum()
    n_vision = int(t["tower"].eq("vision").sum())
    assert r.meta["towers"] == {"included": False, "tensors": {"projector": 2, "vision": n_vision}}
    assert evaluate(r, parse_gate("delta_fro <= 0")).passed
    assert evaluate(r, parse_gate("max:delta_fro <= 0@component=attn")).passed


def test_towers_option_counts_them_keyed_by_tower(vision_only, tmp_path):
    base, ft, planted = vision_only
    r = updelta.diff(base, ft, spectral="off", towers=True)
    ss = sum(float((d * d).sum()) for d in planted.values())
    assert r.summary.iloc[0]["delta_fro"] == pytest.approx(math.sqrt(ss), rel=1e-6)
    lay = r.layers.set_index(["tower", "layer", "component"])
    q = planted["vision_tower.encoder.layers.0.self_attn.q_proj.weight"]
    assert lay.loc[("vision", 0, "attn"), "delta_fro"] == pytest.approx(float(q.norm()), rel=1e-6)
    text0 = r.layers[r.layers["tower"].isna() & (r.layers["layer"] == 0)]
    assert len(text0) and (text0["delta_fro"] == 0).all()
    comp = r.components.set_index(["tower", "component"])
    assert comp.loc[("projector", "mlp"), "delta_fro"] == pytest.approx(
        float(planted["multi_modal_projector.mm_input_projection_weight"].norm()), rel=1e-6)
    assert not evaluate(r, parse_gate("delta_fro <= 0")).passed
    assert not any("towers" in w for w in r.warnings)
    from updelta.report.text import summary_text
    assert "vision" in summary_text(r).split("Per component")[1].split("Top")[0]  # the tower key is shown
    # after the fact: the default result with its aggregates rebuilt, and a saved result read back
    with pytest.warns(UpdeltaWarning, match="towers"):
        r0 = updelta.load(updelta.diff(base, ft, spectral="off").save(tmp_path / "r.parquet"))
    assert r0.summary.iloc[0]["delta_fro"] == 0 and set(r0.tensors["tower"].dropna()) == {"vision", "projector"}
    r1 = r0.with_towers()
    assert r1.summary.iloc[0]["delta_fro"] == pytest.approx(r.summary.iloc[0]["delta_fro"], rel=1e-12)
    assert r1.layers.shape == r.layers.shape and r1.with_towers(False).summary.iloc[0]["delta_fro"] == 0


def test_qwen2_vl_towers_in_memory():
    """Qwen2-VL: vision blocks under model.visual.blocks.N, the projector under model.visual.merger."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        text = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                    num_key_value_heads=1, vocab_size=64, rope_scaling={"type": "mrope", "mrope_section": [1, 1, 2]})
        vision = dict(depth=2, embed_dim=16, hidden_size=16, num_heads=2, mlp_ratio=2, patch_size=2,
                      spatial_merge_size=2, temporal_patch_size=1)
        model = transformers.Qwen2VLForConditionalGeneration(transformers.Qwen2VLConfig(text_config=text,
                                                                                        vision_config=vision))
    names = list(model.state_dict())
    fam = naming.detect_family(names)
    assert fam.name == "llama"
    got = {n: naming.parse(n, fam) for n in names}
    assert got["model.visual.blocks.1.attn.qkv.weight"] == naming.TensorName(1, "attn", "qkv", "weight", tower="vision")
    assert got["model.visual.blocks.0.mlp.fc2.bias"] == naming.TensorName(0, "mlp", "fc2", "bias", tower="vision")
    merger = naming.TensorName(None, "mlp", "mlp.2", "weight", tower="projector")
    assert got["model.visual.merger.mlp.2.weight"] == merger
    assert got["model.visual.merger.ln_q.weight"].component == "norm"
    assert got["model.language_model.layers.0.mlp.up_proj.weight"] == naming.TensorName(0, "mlp", "up_proj", "weight")
    assert all(t.component != "other" for t in got.values())
    assert {t.tower for n, t in got.items() if ".visual." in n} == {"vision", "projector"}
