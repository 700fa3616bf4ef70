"""Write the shipped structure data `updelta/families/hf/<model_type>.json` from the installed transformers' classes
(docs/families.md, "Structure from transformers"). Re-run when the supported transformers range changes:

    python benchmarks/gen_families.py            # every causal-LM architecture the family files do not cover
    python benchmarks/gen_families.py --check    # only compare: exit 1 when a shipped file differs

For each model_type of transformers' causal-LM auto mapping that no hand-written family file lists, the default
config is shrunk (`generator_config`: small sizes, up to 8 layers so that dense and mixture-of-experts layers, and
every layer kind of a hybrid pattern, are present) and `updelta.families.structure.derive` reads the skeleton's
classes. The model_type of the model's own config (a text sub-config, `qwen3_5_text`) gets a copy. Architectures
that do not build are listed. tests/families/test_structure.py checks that shipped files agree with the live
derivation for the installed version.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
OUT = Path(__file__).resolve().parents[1] / "updelta" / "families" / "hf"
LAYERS = 8


def generator_config(model_type: str) -> dict:
    """The config dict the shipped data of `model_type` is derived from (the default config, shrunk)."""
    import arch_models
    from transformers import AutoConfig
    return arch_models.shrink(AutoConfig.for_model(model_type), layers=LAYERS).to_dict()


def hand_types() -> set[str]:
    from updelta.families.naming import families
    return {t for f in families() for t in f.model_types}


def generate(model_type: str) -> list[dict]:
    """The family dicts for `model_type` (and the model's own config model_type when it differs)."""
    from updelta.families.structure import derive
    d = derive(generator_config(model_type))
    out = [d]
    own = d["generated"].get("config_model_type")
    if own and own != model_type:
        out.append({**d, "name": own, "model_types": [own]})
    return out


def dump(d: dict) -> str:
    """Compact JSON, one module rule per line (diffable)."""
    head = {k: v for k, v in d.items() if k != "modules"}
    rules = ",\n  ".join(json.dumps(r) for r in d["modules"])
    return json.dumps(head)[:-1] + ',\n "modules": [\n  ' + rules + "\n ]\n}\n"


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--check", action="store_true")
    ap.add_argument("--only", default="")
    a = ap.parse_args()
    warnings.filterwarnings("ignore")
    from transformers.utils import logging
    logging.set_verbosity_error()
    import arch_models

    from updelta.families.structure import StructureError

    hand = hand_types()
    all_types = set(arch_models.causal_lm_types())
    types = a.only.split(",") if a.only else [t for t in arch_models.causal_lm_types() if t not in hand]
    OUT.mkdir(exist_ok=True)
    written, failed, differ = 0, {}, []
    t0 = time.perf_counter()
    for t in types:
        try:
            fams = generate(t)
        except (StructureError, Exception) as e:  # listed, not fatal
            failed[t] = f"{type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}"
            continue
        for d in fams:
            if d["name"] in hand or d["name"] != t and d["name"] in all_types:
                continue  # a hand family's, or generated from its own model_type
            path = OUT / f"{d['name']}.json"
            text = dump(d)
            if a.check:
                if not path.exists() or json.loads(path.read_text()) != json.loads(text):
                    differ.append(d["name"])
                continue
            path.write_text(text)
            written += 1
    print(f"{len(types)} model types, {written} files written, {len(failed)} not built, "
          f"{time.perf_counter() - t0:.0f} s")
    for t, why in failed.items():
        print(f"  not built: {t}: {why}")
    if differ:
        print("differ from the live derivation:", ", ".join(differ))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
