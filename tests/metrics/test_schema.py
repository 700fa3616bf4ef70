"""The column schema, raw partial sums per tensor, shape lists and typed metadata."""
from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

import ckpt
import updelta
from updelta.metrics import schema
from updelta.tables.aggregate import aggregate_pairs, aggregate_tensors
from updelta.tables.meta import RunInfo
from updelta.tables.result import META_KEY


@pytest.fixture(scope="module")
def res(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("schema")
    base = ckpt.llama_state(dtype=torch.float32)
    b = ckpt.save(base, tmp / "base")
    runs = {r: ckpt.save(ckpt.perturb(base, frac=f, scale=s, seed=i), tmp / r)
            for i, (r, f, s) in enumerate((("a", 0.3, 1e-2), ("b", 0.6, 1e-3), ("c", 0.9, 1e-4)), 1)}
    return updelta.compare(b, runs, spectral="full", histogram=True), base, runs


def test_every_column_is_declared_in_its_table(res):
    r, _, _ = res
    tables = {schema.TENSORS: [r.tensors], schema.PAIRS: [r.pairs],
              schema.AGGREGATES: [r.summary, r.components, r.layers],
              schema.PAIR_AGGREGATES: [r.pairs_summary, r.pairs_components, r.pairs_layers]}
    for table, dfs in tables.items():
        for df in dfs:
            undeclared = [c for c in df.columns if c not in schema.COLUMNS or not schema.COLUMNS[c].in_table(table)]
            assert undeclared == [], (table, undeclared)
    assert set(schema.columns(schema.TENSORS)) - set(r.tensors.columns) == set()
    for c in schema.COLUMNS.values():
        assert c.kind in schema.KINDS and c.agg in schema.AGGS, c
        if c.agg == "formula":
            assert c.formula[0] in schema.FORMULAS and all(a in schema.COLUMNS for a in c.formula[1:]), c


def test_raw_sums_are_the_tensor_sums(res):
    r, base, runs = res
    t = r.tensors.set_index(["run", "name"])
    from safetensors.torch import load_file

    ft = load_file(str(next(runs["b"].glob("*.safetensors"))))
    for name in ("model.layers.0.self_attn.q_proj.weight", "model.norm.weight"):
        w0, w1 = base[name].double().reshape(-1), ft[name].double().reshape(-1)
        d = (ft[name].float() - base[name].float()).double().reshape(-1)  # D in float32, as the kernel forms it
        row = t.loc[("b", name)]
        # the kernel's float32 block sums: the engine tests' tolerance
        assert row["ss_delta"] == pytest.approx(float((d * d).sum()), rel=1e-6)
        assert row["ss_base"] == pytest.approx(float((w0 * w0).sum()), rel=1e-6)
        assert row["dot_delta_base"] == pytest.approx(float((d * w0).sum()), rel=1e-6)
        assert row["sum_abs_delta"] == pytest.approx(float(d.abs().sum()), rel=1e-6)
        assert row["n_eq"] == int((w1 == w0).sum()) and row["n_le_atol"] == int((d.abs() <= 1e-5).sum())
        assert isinstance(row["n_eq"], (int, np.integer)) and row["n_eq"] == round(row["sparsity_exact"] * row["numel"])
        assert row["delta_fro"] == math.sqrt(row["ss_delta"])


def test_aggregates_from_sums_equal_aggregates_from_ratios(res):
    """Older tables (no raw sums) aggregate from the ratio columns; both agree to rounding."""
    r, _, _ = res
    old_t = r.tensors.drop(columns=list(schema.RAW_SUMS))
    old_p = r.pairs.drop(columns=["ss_delta_a", "ss_delta_b"])
    for by in (["run"], ["run", "component"], ["run", "layer", "component"]):
        a, b = aggregate_tensors(r.tensors, by), aggregate_tensors(old_t, by)
        for c in schema.CHEAP:
            np.testing.assert_allclose(a[c].to_numpy(float), b[c].to_numpy(float), rtol=1e-12, atol=0)
    for by in ([], ["component"], ["layer", "component"]):
        a, b = aggregate_pairs(r.pairs, by), aggregate_pairs(old_p, by)
        for c in schema.columns(schema.PAIR_AGGREGATES, "metric"):
            np.testing.assert_allclose(a[c].to_numpy(float), b[c].to_numpy(float), rtol=1e-12, atol=0)
    whole = r.summary.set_index("run")
    t = r.tensors
    for run in r.runs:
        s = t[t["run"] == run]
        assert whole.loc[run, "n_eq"] == s["n_eq"].sum()
        assert whole.loc[run, "sparsity_exact"] == s["n_eq"].sum() / s["n_compared"].sum()
        assert whole.loc[run, "cos_delta_base"] == pytest.approx(
            s["dot_delta_base"].sum() / math.sqrt(s["ss_delta"].sum() * s["ss_base"].sum()), rel=1e-12)


def test_shape_is_a_list_in_every_format(res, tmp_path):
    r, _, _ = res
    row = r.tensors[r.tensors["name"] == "model.layers.0.mlp.up_proj.weight"].iloc[0]
    assert row["shape"] == [32, 16]
    back = updelta.load(r.save(tmp_path / "cmp"))
    assert back.tensors["shape"].tolist() == r.tensors["shape"].tolist()
    assert updelta.load(r.save(tmp_path / "one.parquet")).tensors["shape"].iloc[0] == r.tensors["shape"].iloc[0]
    assert pq.read_schema(tmp_path / "one.parquet").field("shape").type == pa.list_(pa.int64())
    csv = pd.read_csv(r.save(tmp_path / "t.csv"))
    assert [json.loads(s) for s in csv["shape"]] == r.tensors["shape"].tolist()
    assert json.loads(csv["hist"].iloc[0]) == list(r.tensors["hist"].iloc[0])
    js = json.loads((r.save(tmp_path / "t.json")).read_text())
    assert js[0]["shape"] == r.tensors["shape"].iloc[0]
    # a CSV of a loaded result (lists come back from parquet as arrays) still writes JSON lists
    csv2 = pd.read_csv(back.save(tmp_path / "t2.csv"))
    assert [json.loads(s) for s in csv2["shape"]] == r.tensors["shape"].tolist()


def test_results_of_the_previous_version_load(res, tmp_path):
    """A parquet written by updelta 0.1.0: shape as "AxB" text, no raw-sum columns."""
    r, _, _ = res
    old = r.tensors.drop(columns=list(schema.RAW_SUMS)).assign(shape=r.tensors["shape"].map(schema.shape_text))
    table = pa.Table.from_pandas(old, preserve_index=False)
    table = table.replace_schema_metadata({**(table.schema.metadata or {}),
                                           META_KEY: json.dumps(r.meta, default=str).encode()})
    pq.write_table(table, tmp_path / "old.parquet")
    back = updelta.load(tmp_path / "old.parquet")
    assert back.tensors["shape"].tolist() == r.tensors["shape"].tolist()
    for c in schema.CHEAP:
        np.testing.assert_allclose(back.summary[c].to_numpy(float), r.summary[c].to_numpy(float), rtol=1e-12)
    assert back.summary["n_spectral"].tolist() == r.summary["n_spectral"].tolist()


def test_typed_metadata_round_trips(res):
    r, _, _ = res
    disk = json.loads(json.dumps(r.meta, default=str))
    info = RunInfo.from_dict(disk)
    assert info.to_dict() == disk
    assert info.run_order == ("a", "b", "c") and info.pairs[0] == ("a", "b")
    assert info.options.atol == r.meta["options"]["atol"] and info.options.spectral == "full"
    assert info.run("a").path == r.meta["runs"]["a"]["path"] and info.base.n_params > 0
    assert info.pairing.family == r.meta["pairing"]["family"]
    assert r.info == info
    part = RunInfo.from_dict({"run_order": ["x"], "steps": [1, 2]})
    assert part.options.atol == 1e-5 and part.base.path is None and part.extra == {"steps": [1, 2]}
    assert part.to_dict()["steps"] == [1, 2]


def test_gate_metrics_are_the_registry_and_the_schema():
    import updelta.metrics.elementwise  # noqa: F401  (registering modules)
    import updelta.metrics.pairwise  # noqa: F401
    import updelta.metrics.spectral  # noqa: F401
    from updelta.report.gates import PAIR_COLUMNS, RUN_COLUMNS, known_metrics
    from updelta.metrics import REGISTRY

    assert set(REGISTRY) <= known_metrics()
    assert {"rel_delta", "sparsity_atol", "added_fro", "nonfinite_ft"} <= set(RUN_COLUMNS)
    assert "jaccard_random_rtol" in PAIR_COLUMNS and "n_compared" not in PAIR_COLUMNS
    assert not {"ss_delta", "dot", "delta_fro_a", "layer", "shape"} & known_metrics()


def test_components_and_conventions_come_from_one_place():
    from updelta.report.gates import COMPONENTS
    from updelta.metrics.pairwise import CONVS
    from updelta.plot.common import COMPONENT_ORDER

    from importlib import resources

    common = json.loads((resources.files("updelta.families") / "common.json").read_text())
    assert tuple(common["components"]) == schema.components() == COMPONENTS == tuple(COMPONENT_ORDER)
    assert CONVS == schema.CONVS == ("exact", "atol", "rtol")
    assert schema.label("sparsity_atol", long=True, atol=1e-4) == "share unchanged, atol: |ΔW| ≤ 0.0001"
    assert schema.shape_text([16, 8]) == "16x8" and schema.shape_list("16x8") == [16, 8]
