"""docs/ is the package's reference: every registered metric is defined there under the section its `reference`
names, and no docstring or comment in the package points outside the repository."""
import re
from pathlib import Path

import pytest

from updelta.metrics import REGISTRY
from updelta.metrics import spectral  # noqa: F401  (registers the spectral metrics)
from updelta.metrics import pairwise  # noqa: F401

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"


def _headings(path: Path) -> set[str]:
    return {m.group(1).strip() for m in re.finditer(r"^##+ (.+)$", path.read_text(encoding="utf-8"), re.M)}


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_every_metric_is_defined_in_docs_under_its_section(name):
    m = REGISTRY[name]
    text = (DOCS / "metrics.md").read_text(encoding="utf-8")
    assert re.search(rf"`{re.escape(name)}`|`{re.escape(name.rsplit('_', 1)[0])}_<conv>`", text), name
    doc, _, section = m.reference.partition(", ")
    assert doc == "metrics.md"
    assert section.split(" (")[0] in _headings(DOCS / "metrics.md"), m.reference


def test_package_cites_only_docs():
    bad = []
    for p in (ROOT / "updelta").rglob("*.py"):
        for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
            if "shared/reference" in line or re.search(r"\bissue \d+", line, re.I) or "`updelta metrics`" in line:
                bad.append(f"{p.relative_to(ROOT)}:{i}: {line.strip()}")
    assert not bad, "\n".join(bad)
    for p in (ROOT / "updelta").rglob("*.py"):
        for ref in re.findall(r"docs/(\w+\.md)", p.read_text(encoding="utf-8")):
            assert (DOCS / ref).exists(), (p, ref)
