"""The straightforward way, as a baseline: load both state dicts, loop over tensors in float32 torch."""
import sys

import torch
from safetensors.torch import load_file
from pathlib import Path


def load(folder: Path) -> dict:
    sd = {}
    for f in sorted(folder.glob("*.safetensors")):
        sd.update(load_file(str(f)))
    return sd


def main(base: str, ft: str) -> None:
    b, f = load(Path(base)), load(Path(ft))
    rows = []
    for name, w0 in b.items():
        a, c = w0.float(), f[name].float()
        d = c - a
        rows.append((name, float(d.norm()), float(a.norm()), float(d.abs().max()), float(d.abs().mean()),
                     float((d * a).sum()), float((c == a).float().mean()), float((d.abs() <= 1e-5).float().mean()),
                     float((d.abs() <= 1e-3 * torch.maximum(a.abs(), c.abs())).float().mean())))
    print(len(rows))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
