"""Self-contained HTML rendering of a `Document`: inline CSS, PNGs embedded as base64, no external assets.

The page reads top-down at 1400 px without sideways scrolling: a table of contents, tables that wrap their
headers (the summary wraps its cells too, so its gates column is always in view), figures side by side as
previews with their pixel sizes given (each links to its full-size PNG in `figures/`)."""
from __future__ import annotations

import base64
import html
import re
import struct

from updelta.report.document import Bullets, Contents, Details, Document, Heading, Image, Para, Table

CSS = """
body{font-family:-apple-system,BlinkMacSystemFont,"Segoe UI",Helvetica,Arial,sans-serif;font-size:14px;
  line-height:1.5;color:#1f2328;max-width:1320px;margin:24px auto;padding:0 24px;background:#fff}
h1{font-size:26px;border-bottom:1px solid #d0d7de;padding-bottom:6px}
h2{font-size:20px;border-bottom:1px solid #d0d7de;padding-bottom:4px;margin-top:32px}
h3{font-size:16px;margin-top:24px}
code{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:12px;background:#f6f8fa;
  padding:1px 4px;border-radius:4px;overflow-wrap:anywhere}
nav.toc{background:#f6f8fa;border:1px solid #d0d7de;border-radius:6px;padding:6px 14px;margin:12px 0}
nav.toc ol{margin:4px 0;padding-left:22px;columns:3}
nav.toc li{margin:1px 0}
table{border-collapse:collapse;margin:8px 0 16px;display:block;overflow-x:auto;max-width:100%;font-size:13px}
table.fit{display:table;width:100%;table-layout:auto}
th,td{border:1px solid #d0d7de;padding:3px 7px}
td.r{white-space:nowrap}
table.fit td.l{overflow-wrap:anywhere}
th{background:#f6f8fa;font-weight:600;vertical-align:bottom}
td.r,th.r{text-align:right;font-variant-numeric:tabular-nums}
td.l,th.l{text-align:left}
tr:nth-child(even) td{background:#fbfcfd}
tr.fail td{background:#ffebe9}
tr.unchanged td{color:#6e7781;font-style:italic}
.fail-text,strong.fail{color:#cf222e}
.caption{color:#57606a;font-size:13px}
.figures{display:flex;flex-wrap:wrap;gap:16px}
figure{margin:8px 0;flex:1 1 600px;max-width:calc(50% - 8px)}
figure.wide{flex-basis:100%;max-width:100%}
figure img{max-width:100%;height:auto;max-height:900px;object-fit:contain;border:1px solid #d0d7de}
figcaption{color:#57606a;font-size:13px}
details{margin:8px 0}
summary{cursor:pointer;font-weight:600}
ul{padding-left:22px}
li{margin:4px 0}
"""


def inline(s: str) -> str:
    """Escape, then turn `code` and **bold** into tags (FAIL in bold is coloured)."""
    out = html.escape(str(s), quote=False)
    out = re.sub(r"`([^`]+)`", r"<code>\1</code>", out)
    out = re.sub(r"\*\*FAIL\*\*", '<strong class="fail">FAIL</strong>', out)
    out = re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", out)
    return out


def _slug(s: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", s.lower()).strip("-")


def _header(h: str) -> str:
    """A header that may wrap after underscores (sparsity_exact) instead of widening its column."""
    return inline(h).replace("_", "_<wbr>")


def png_size(data: bytes | None) -> tuple[int, int] | None:
    """(width, height) in pixels from a PNG's header, None when `data` is not a PNG."""
    if not data or data[:8] != b"\x89PNG\r\n\x1a\n" or data[12:16] != b"IHDR":
        return None
    return struct.unpack(">II", data[16:24])


def table(t: Table) -> str:
    al = t.aligns()
    flags = t.flags or [None] * len(t.rows)
    head = "".join(f'<th class="{al[i]}">{_header(h)}</th>' for i, h in enumerate(t.header))
    body = []
    for r, flag in zip(t.rows, flags):
        cls = f' class="{flag}"' if flag else ""
        body.append(f"<tr{cls}>" + "".join(f'<td class="{al[i]}">{inline(c)}</td>' for i, c in enumerate(r))
                    + "</tr>")
    cap = f'<p class="caption">{inline(t.caption)}</p>' if t.caption else ""
    cls = ' class="fit"' if t.fit else ""
    return f"{cap}<table{cls}><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _image(b: Image) -> str:
    if b.data is not None:
        src = "data:image/png;base64," + base64.b64encode(b.data).decode("ascii")
    else:
        src = html.escape(b.path)
    size = png_size(b.data)
    wh = f' width="{size[0]}" height="{size[1]}"' if size else ""
    px = f" ({size[0]} x {size[1]} px)" if size else ""
    cap = f"<figcaption>{inline(b.caption or '')}{px} <a href=\"{html.escape(b.path)}\">full size</a></figcaption>"
    wide = ' class="wide"' if size and size[0] > 2.2 * size[1] else ""  # a long strip takes the whole row
    return f'<figure{wide}><img src="{src}" alt="{html.escape(b.alt)}"{wh} loading="lazy">{cap}</figure>'


def _contents(doc: Document) -> str:
    items = "".join(f'<li><a href="#{_slug(t)}">{inline(t)}</a></li>' for t in doc.sections())
    return f'<nav class="toc"><strong>Contents</strong><ol>{items}</ol></nav>' if items else ""


def _block(b, doc: Document | None = None) -> str:
    if isinstance(b, Heading):
        return f'<h{b.level} id="{_slug(b.text)}">{inline(b.text)}</h{b.level}>'
    if isinstance(b, Contents):
        return _contents(doc) if doc is not None else ""
    if isinstance(b, Para):
        return f"<p>{inline(b.text)}</p>"
    if isinstance(b, Bullets):
        out = []
        for x in b.items:
            head, subs = (x if isinstance(x, tuple) else (x, []))
            inner = ("<ul>" + "".join(f"<li>{inline(y)}</li>" for y in subs) + "</ul>") if subs else ""
            out.append(f"<li>{inline(head)}{inner}</li>")
        return "<ul>" + "".join(out) + "</ul>"
    if isinstance(b, Table):
        return table(b)
    if isinstance(b, Image):
        return _image(b)
    if isinstance(b, Details):
        inner = "\n".join(_block(x, doc) for x in b.blocks)
        return f"<details><summary>{inline(b.summary)}</summary>\n{inner}\n</details>"
    raise TypeError(f"unknown block {type(b).__name__}")


def render(doc: Document) -> str:
    parts, figs = [], []
    for b in doc.blocks:  # consecutive figures share one flowing row
        if isinstance(b, Image):
            figs.append(_image(b))
            continue
        if figs:
            parts.append('<div class="figures">' + "".join(figs) + "</div>")
            figs = []
        parts.append(_block(b, doc))
    if figs:
        parts.append('<div class="figures">' + "".join(figs) + "</div>")
    body = "\n".join(parts)
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{html.escape(doc.title)}</title><style>{CSS}</style></head>\n"
            f"<body>\n<h1>{inline(doc.title)}</h1>\n{body}\n</body></html>\n")
