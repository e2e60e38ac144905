"""The report as data: sections of paragraphs, tables and figures.

Both renderers (HTML and markdown) walk the same list of sections, which is what keeps
report.html and report.md saying the same thing.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field

import pandas as pd


@dataclass
class Paragraph:
    text: str
    kind: str = "text"  # text | note | summary


@dataclass
class Table:
    name: str  # CSV file stem under tables/
    frame: pd.DataFrame
    caption: str = ""
    digits: int = 4
    csv: bool = True  # also written to tables/<name>.csv
    display: pd.DataFrame | None = None  # pre-formatted cells (e.g. value with CI); default: frame

    def cells(self) -> tuple[list[str], list[list[str]]]:
        """Header and rows as text, as both renderers show them."""
        shown = self.display if self.display is not None else self.frame
        whole = {i for i, c in enumerate(shown.columns) if pd.api.types.is_float_dtype(shown[c])
                 and shown[c].dropna().map(float.is_integer).all() and shown[c].notna().any()}
        rows = [[format_cell(int(v) if i in whole and v == v else v, self.digits) for i, v in enumerate(row)]
                for row in shown.itertuples(index=False, name=None)]
        return [str(c) for c in shown.columns], rows


@dataclass
class Figure:
    name: str  # file stem under plots/
    data: bytes
    mime: str  # image/svg+xml or image/png
    caption: str = ""
    alt: str = ""

    @property
    def suffix(self) -> str:
        return ".svg" if self.mime == "image/svg+xml" else ".png"

    @property
    def data_uri(self) -> str:
        return f"data:{self.mime};base64,{base64.b64encode(self.data).decode('ascii')}"


@dataclass
class Section:
    id: str
    title: str
    blocks: list[Paragraph | Table | Figure] = field(default_factory=list)

    def add(self, block: Paragraph | Table | Figure) -> Section:
        self.blocks.append(block)
        return self

    def text(self, text: str, kind: str = "text") -> Section:
        return self.add(Paragraph(text, kind))


def format_cell(v: object, digits: int = 4) -> str:
    """Numbers with fixed digits, NaN/None as an empty cell, booleans as yes/no."""
    if v is None:
        return ""
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        if v != v:
            return ""
        if v in (float("inf"), float("-inf")):
            return "inf" if v > 0 else "-inf"
        return f"{v:.{digits}f}"
    if hasattr(v, "item") and not isinstance(v, (str, bytes)):
        return format_cell(v.item(), digits)
    return str(v)
