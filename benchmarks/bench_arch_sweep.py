"""The architecture sweep: every causal-LM architecture of the installed transformers, built tiny, saved, paired and
(optionally) diffed; how well updelta's map of each model agrees with the model's own classes (docs/families.md).

    python benchmarks/bench_arch_sweep.py expect            # build tiny models (cached), write expected maps
    python benchmarks/bench_arch_sweep.py measure [--diff] [--out sweep.json] [--only llama,mixtral]

`expect` needs this tree's `updelta.families.structure` (the classes -> component reader): for each tensor of the
saved base checkpoint, the component of its owning module class, and whether it belongs to a routed expert, written
to `<cache>/<model_type>/expected.json`. `measure` then uses whatever `updelta` is importable (so the same command
measures an older tree: put it first on PYTHONPATH) and counts per architecture: tensors in `other`, misclassified
tensors (component differs from the owning class's, where the class gives one), routers that are not `router`,
expert rows without an expert index, whether a heads table exists where the config has heads. `--diff` also runs
`updelta.diff` (spectral off) on each pair. Cache: $ARCH_CACHE or /tmp/arch_cache.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
ROOT = Path(os.environ.get("ARCH_CACHE", "/tmp/arch_cache"))


def _quiet():
    warnings.filterwarnings("ignore")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    try:
        from transformers.utils import logging
        logging.set_verbosity_error()
        logging.disable_progress_bar()
    except Exception:
        pass


def expect(types: list[str]) -> None:
    import arch_models

    from updelta.families.experts import expand
    from updelta.families.structure import StructureError, derive
    from updelta.io import open_checkpoint
    from updelta.families.naming import Family, parse

    for t in types:
        t0 = time.perf_counter()
        st = arch_models.build(t, ROOT)
        print(t, st["ok"], f"{time.perf_counter() - t0:.1f} s", st.get("why", ""), flush=True)
        if not st["ok"]:
            continue
        base = Path(st["dir"]) / "base"
        cfg = json.loads((base / "config.json").read_text())
        try:
            fam = Family.from_json(derive(cfg), t)
        except StructureError as e:
            (Path(st["dir"]) / "expected.json").write_text(json.dumps({"error": str(e)}))
            continue
        ck = open_checkpoint(base)
        tensors, _ = expand(ck.tensors, fam, base)
        exp: dict[str, dict] = {}
        for name, ref in tensors.items():
            i = parse(name, fam)
            e = exp.setdefault(ref.name, {"component": i.component, "expert": False})
            e["expert"] = e["expert"] or i.expert is not None
        (Path(st["dir"]) / "expected.json").write_text(json.dumps({"tensors": exp}))


def heads_in_config(cfg: dict) -> bool:
    tc = cfg.get("text_config") if isinstance(cfg.get("text_config"), dict) else cfg
    return any(isinstance(tc.get(k), int) and tc.get(k) > 0
               for k in ("num_attention_heads", "n_head", "n_heads", "num_heads"))


def measure(types: list[str], run_diff: bool) -> dict:
    import updelta
    from updelta.io import open_checkpoint
    from updelta.options import DiffOptions
    from updelta.scan.pairing import pair_checkpoints

    out = {"updelta": updelta.__file__, "archs": {}}
    for t in types:
        d = ROOT / t
        st = json.loads((d / "status.json").read_text()) if (d / "status.json").exists() else None
        if st is None or not st["ok"]:
            out["archs"][t] = {"built": False, "why": (st or {}).get("why", "not built")}
            continue
        rec: dict = {"built": True}
        exp_path = d / "expected.json"
        exp = json.loads(exp_path.read_text()).get("tensors") if exp_path.exists() else None
        try:
            t0 = time.perf_counter()
            base, run = open_checkpoint(d / "base"), open_checkpoint(d / "run")
            p = pair_checkpoints(base, {"run": run}, DiffOptions())
            rec["pair_s"] = round(time.perf_counter() - t0, 3)
        except Exception as e:
            rec.update(paired=False, why=f"{type(e).__name__}: {e}"[:300])
            out["archs"][t] = rec
            continue
        rows = [x for x in p.tensors if x.info.tower is None]
        rec.update(paired=True, family=p.family, structure=p.notes.get("structure"), rows=len(rows),
                   other=[x.name for x in rows if x.info.component == "other"],
                   family_note=p.notes.get("family_note"), heads=bool(p.heads),
                   heads_note=p.notes.get("heads"), config_heads=heads_in_config(base.config or {}))
        if exp is not None:
            mis, router, noexp = [], [], []
            for x in rows:
                e = exp.get(x.base.name)
                if e is None or e["component"] == "other":
                    continue
                if x.info.component != e["component"]:
                    mis.append(f"{x.name}: {x.info.component} (class: {e['component']})")
                    if e["component"] == "router":
                        router.append(x.name)
                if e["expert"] and x.info.expert is None:
                    noexp.append(x.name)
            rec.update(misclassified=mis, router_wrong=router, expert_unindexed=noexp)
        if run_diff:
            try:
                t0 = time.perf_counter()
                r = updelta.diff(d / "base", d / "run", spectral="off")
                rec.update(diffed=True, diff_s=round(time.perf_counter() - t0, 3), diff_rows=len(r.tensors))
            except BaseException as e:  # noqa: BLE001 - the sweep records it
                rec.update(diffed=False, diff_why=f"{type(e).__name__}: {e}"[:300])
        out["archs"][t] = rec
    return out


def summary(res: dict) -> dict:
    a = res["archs"].values()
    built = [r for r in a if r.get("built")]
    paired = [r for r in built if r.get("paired")]
    with_heads_cfg = [r for r in paired if r.get("config_heads")]
    return {
        "architectures": len(res["archs"]), "built": len(built), "paired": len(paired),
        "diffed": sum(1 for r in paired if r.get("diffed")),
        "with_other": sum(1 for r in paired if r["other"]),
        "other_rows": sum(len(r["other"]) for r in paired), "rows": sum(r["rows"] for r in paired),
        "with_misclassified": sum(1 for r in paired if r.get("misclassified")),
        "misclassified_rows": sum(len(r.get("misclassified") or []) for r in paired),
        "router_wrong": sum(1 for r in paired if r.get("router_wrong")),
        "expert_unindexed": sum(1 for r in paired if r.get("expert_unindexed")),
        "config_heads": len(with_heads_cfg), "heads_tables": sum(1 for r in with_heads_cfg if r["heads"]),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("what", choices=["expect", "measure"])
    ap.add_argument("--only", default="")
    ap.add_argument("--diff", action="store_true")
    ap.add_argument("--out", default="")
    a = ap.parse_args()
    _quiet()
    import arch_models
    types = a.only.split(",") if a.only else arch_models.causal_lm_types()
    if a.what == "expect":
        t0 = time.perf_counter()
        expect(types)
        print(f"expect: {len(types)} architectures in {time.perf_counter() - t0:.0f} s")
        return
    t0 = time.perf_counter()
    res = measure(types, a.diff)
    res["summary"] = summary(res)
    res["seconds"] = round(time.perf_counter() - t0, 1)
    if a.out:
        Path(a.out).write_text(json.dumps(res, indent=1))
    print(json.dumps(res["summary"], indent=1), f"\n{res['seconds']} s")


if __name__ == "__main__":
    main()
