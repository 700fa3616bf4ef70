"""A small document model shared by the Markdown and HTML renderers.

Text uses two inline marks only: `code` and **bold**. Tables hold strings (already
formatted) with a per-column alignment and an optional per-row flag ("fail", "unchanged") that the
renderers mark. `Contents` stands for the table of contents, which each renderer builds from the
document's level-2 headings.
"""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Heading:
    text: str
    level: int = 2


@dataclass
class Para:
    text: str


@dataclass
class Bullets:
    items: list  # str, or (str, [str, ...]) for an item with nested items


@dataclass
class Table:
    header: list[str]
    rows: list[list[str]]
    align: list[str] | None = None  # "l" | "r" per column; default: first left, rest right
    flags: list[str | None] | None = None  # per row: None, "fail" or "unchanged"
    caption: str | None = None
    fit: bool = False  # the HTML page shows it whole, wrapping cells, never scrolled sideways (the summary)

    def aligns(self) -> list[str]:
        return self.align or (["l"] + ["r"] * (len(self.header) - 1))


@dataclass
class Image:
    path: str  # relative to the report folder (figures/x.png)
    alt: str
    caption: str | None = None
    data: bytes | None = None  # PNG bytes, embedded by the HTML renderer


@dataclass
class Contents:
    """The table of contents: links to every level-2 heading of the document, in order."""


@dataclass
class Details:
    summary: str
    blocks: list = field(default_factory=list)


@dataclass
class Document:
    title: str
    blocks: list = field(default_factory=list)

    def add(self, *blocks) -> "Document":
        self.blocks.extend(blocks)
        return self

    def sections(self) -> list[str]:
        """The text of every level-2 heading, in order (what `Contents` lists)."""
        return [b.text for b in self.blocks if isinstance(b, Heading) and b.level == 2]
