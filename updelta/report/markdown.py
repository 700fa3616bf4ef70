"""GitHub-flavoured Markdown rendering of a `Document` (reads well as a CI job summary).

Tables are padded so the source lines up as well as the rendered page; images are linked
relative to the report folder; long tables sit in <details> blocks.
"""
from __future__ import annotations

import re
import unicodedata

from updelta.report.document import Bullets, Contents, Details, Document, Heading, Image, Para, Table


def _width(s: str) -> int:
    return sum(2 if unicodedata.east_asian_width(ch) in ("W", "F") else 1 for ch in s)


def _cell(s: str) -> str:
    return str(s).replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def table(t: Table) -> str:
    header = [_cell(h) for h in t.header]
    rows = [[_cell(c) for c in r] for r in t.rows]
    al = t.aligns()
    widths = [max([3, _width(header[i])] + [_width(r[i]) for r in rows]) for i in range(len(header))]

    def pad(s, i):
        gap = " " * (widths[i] - _width(s))
        return gap + s if al[i] == "r" else s + gap

    lines = ["| " + " | ".join(pad(h, i) for i, h in enumerate(header)) + " |",
             "| " + " | ".join(("-" * (widths[i] - 1) + ":") if al[i] == "r" else ("-" * widths[i])
                               for i in range(len(header))) + " |"]
    lines += ["| " + " | ".join(pad(c, i) for i, c in enumerate(r)) + " |" for r in rows]
    out = "\n".join(lines)
    if t.caption:
        out = f"{t.caption}\n\n{out}"
    return out


def anchor(text: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", text.lower()).replace(" ", "-")


def _block(b, doc: Document | None = None) -> str:
    if isinstance(b, Heading):
        return f"{'#' * b.level} {b.text}"
    if isinstance(b, Contents):
        secs = doc.sections() if doc is not None else []
        return "**Contents:** " + " · ".join(f"[{t}](#{anchor(t)})" for t in secs) if secs else ""
    if isinstance(b, Para):
        return b.text
    if isinstance(b, Bullets):
        lines = []
        for x in b.items:
            head, subs = (x if isinstance(x, tuple) else (x, []))
            lines.append(f"- {head}")
            lines += [f"  - {y}" for y in subs]
        return "\n".join(lines)
    if isinstance(b, Table):
        return table(b)
    if isinstance(b, Image):
        s = f"![{b.alt}]({b.path})"
        return f"*{b.caption}*<br>{s}" if b.caption else s  # one line: the caption, a break, the figure
    if isinstance(b, Details):
        inner = "\n\n".join(_block(x) for x in b.blocks)
        return f"<details><summary>{b.summary}</summary>\n\n{inner}\n\n</details>"
    raise TypeError(f"unknown block {type(b).__name__}")


def render(doc: Document) -> str:
    parts, figs = [f"# {doc.title}"], []
    for b in doc.blocks:  # consecutive figures: one paragraph, a line break after each caption and figure
        if isinstance(b, Image):
            figs.append(_block(b, doc))
            continue
        if figs:
            parts.append("<br>\n".join(figs))
            figs = []
        x = _block(b, doc)
        if x:
            parts.append(x)
    if figs:
        parts.append("<br>\n".join(figs))
    return "\n\n".join(parts).rstrip() + "\n"
