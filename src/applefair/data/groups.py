"""GroupSpec: how raw attribute values become group ids.

A group id is an int in [0, K); -1 means unknown (missing, NaN, -1, "unknown", a value
outside the bins or not listed). Unknown samples count in overall metrics but are excluded
from group metrics and from group-aware losses.

Three kinds of spec, all usable from the CLI (``GroupSpec.parse``) and YAML (``from_dict``):

- categorical: ``sex`` (groups learned from the data) or ``sex=F,M`` (fixed order);
- binned continuous: ``age:0,40,60,inf`` (bins [0,40), [40,60), [60,inf)), optional labels
  ``age:0,60,inf:young,old`` and a unit ``age@days:0,60,inf`` (raw values in days, edges in
  years, as in Harvard-FairSeg's release);
- intersectional: ``sex*age:0,60,inf`` (every combination that occurs, named ``F|60+``).
"""

from __future__ import annotations

import itertools
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from applefair.errors import InputError

UNKNOWN = -1
_UNKNOWN_STRINGS = {"", "nan", "none", "null", "unknown", "-1", "na", "n/a", "?"}
UNITS = {"": 1.0, "years": 1.0, "days": 1.0 / 365.25, "months": 1.0 / 12.0}
JOIN = "|"


class SmallGroupWarning(UserWarning):
    """A group has fewer samples than `GroupSpec.min_size`: its metrics will be noisy."""


@dataclass
class GroupSpec:
    """Turns one or more attribute columns into group ids.

    `groups` lists the group names in a fixed order (their ids); when empty, `fit` learns it
    (sorted distinct known values, bin labels, or the combinations that occur).
    """

    attribute: str
    groups: list[str] = field(default_factory=list)
    bins: list[float] | None = None
    unit: str = ""
    parts: list[GroupSpec] | None = None
    min_size: int = 10

    def __post_init__(self) -> None:
        if self.unit not in UNITS:
            raise InputError(f"group spec '{self.attribute}': unit '{self.unit}' is not known "
                             f"(expected one of: {', '.join(u for u in UNITS if u)})")
        if self.bins is not None:
            edges = [_edge(e, self.attribute) for e in self.bins]
            if len(edges) < 3 or any(b <= a for a, b in zip(edges[:-1], edges[1:], strict=True)):
                raise InputError(f"group spec '{self.attribute}': bin edges {self.bins} must be increasing "
                                 "and give at least 2 bins (e.g. 0,60,inf)")
            self.bins = edges
            if not self.groups:
                self.groups = [_bin_label(a, b) for a, b in zip(edges[:-1], edges[1:], strict=True)]
            elif len(self.groups) != len(edges) - 1:
                raise InputError(f"group spec '{self.attribute}': {len(self.groups)} label(s) {self.groups} "
                                 f"for {len(edges) - 1} bins")
        if self.parts is not None and len(self.parts) < 2:
            raise InputError(f"group spec '{self.attribute}': an intersection needs at least 2 attributes")

    # ---- construction -------------------------------------------------------------------
    @classmethod
    def parse(cls, text: str, min_size: int = 10) -> GroupSpec:
        """From a CLI string: ``sex``, ``sex=F,M``, ``age:0,60,inf[:young,old]``, ``age@days:...``,
        ``sex*age:0,60,inf``."""
        text = str(text).strip()
        pieces = [p.strip() for p in text.replace(" x ", "*").split("*")]
        if not text or any(not p for p in pieces):
            raise InputError(f"group spec '{text}': expected e.g. 'sex', 'age:0,60,inf' or 'sex*age:0,60,inf'")
        parts = [cls._parse_one(p, min_size) for p in pieces]
        if len(parts) == 1:
            return parts[0]
        return cls(attribute="*".join(p.attribute for p in parts), parts=parts, min_size=min_size)

    @classmethod
    def _parse_one(cls, text: str, min_size: int) -> GroupSpec:
        if "=" in text:
            name, cats = text.split("=", 1)
            groups = [c.strip() for c in cats.split(",") if c.strip()]
            return cls(attribute=name.strip(), groups=groups, min_size=min_size)
        name, *rest = text.split(":")
        name, _, unit = name.partition("@")
        if len(rest) > 2:
            raise InputError(f"group spec '{text}': expected NAME[@UNIT]:EDGES[:LABELS]")
        bins = [e.strip() for e in rest[0].split(",")] if rest else None
        labels = [s.strip() for s in rest[1].split(",")] if len(rest) == 2 else []
        return cls(attribute=name.strip(), bins=bins, groups=labels, unit=unit.strip(), min_size=min_size)

    @classmethod
    def from_dict(cls, d: dict | str | GroupSpec) -> GroupSpec:
        """From YAML: ``{attribute, groups?, bins?, unit?, min_size?}``, ``{intersect: [..]}`` or a string."""
        if isinstance(d, GroupSpec):
            return d
        if isinstance(d, str):
            return cls.parse(d)
        if not isinstance(d, dict):
            raise InputError(f"group spec {d!r}: expected a string or a mapping")
        raw_parts = d.get("intersect", d.get("parts"))
        min_size = int(d.get("min_size", 10))
        if raw_parts is not None:
            parts = [cls.from_dict(p) for p in raw_parts]
            return cls(attribute=d.get("attribute") or "*".join(p.attribute for p in parts), parts=parts,
                       groups=list(d.get("groups", [])), min_size=min_size)
        if "attribute" not in d:
            raise InputError(f"group spec {d}: missing key 'attribute'")
        unknown_keys = set(d) - {"attribute", "groups", "labels", "bins", "unit", "min_size"}
        if unknown_keys:
            raise InputError(f"group spec {d}: unknown key(s) {', '.join(sorted(unknown_keys))}")
        return cls(attribute=str(d["attribute"]), groups=[str(g) for g in d.get("groups", d.get("labels", []))],
                   bins=d.get("bins"), unit=str(d.get("unit", "")), min_size=min_size)

    def to_dict(self) -> dict:
        out: dict = {"attribute": self.attribute, "groups": list(self.groups)}
        if self.bins is not None:
            out["bins"] = [float(b) if math.isfinite(b) else ("inf" if b > 0 else "-inf") for b in self.bins]
        if self.unit:
            out["unit"] = self.unit
        if self.parts is not None:
            out["intersect"] = [p.to_dict() for p in self.parts]
        if self.min_size != 10:
            out["min_size"] = self.min_size
        return out

    # ---- use ----------------------------------------------------------------------------
    @property
    def attributes(self) -> list[str]:
        """The raw columns this spec reads."""
        return [a for p in self.parts for a in p.attributes] if self.parts else [self.attribute]

    @property
    def num_groups(self) -> int:
        return len(self.groups)

    def name(self, gid: int) -> str:
        return "unknown" if gid == UNKNOWN else self.groups[gid]

    def fit(self, frame: pd.DataFrame) -> GroupSpec:
        """Fix the group order from the data if it was not given; warn about small groups."""
        if self.parts is not None:
            for p in self.parts:
                if not p.groups:
                    p.fit_order(frame)
            if not self.groups:
                labels = self._labels(frame)
                present = {v for v in labels if v is not None}
                combos = [JOIN.join(c) for c in itertools.product(*(p.groups for p in self.parts))]
                self.groups = [c for c in combos if c in present]
        elif not self.groups:
            self.fit_order(frame)
        if len(self.groups) < 2:
            raise InputError(f"column '{self.attribute}': found {len(self.groups)} group(s) "
                             f"{self.groups}, expected at least 2")
        self.warn_small(frame)
        return self

    def fit_order(self, frame: pd.DataFrame) -> None:
        """Learn categorical groups (sorted distinct known values) without the size checks."""
        self.groups = sorted({v for v in self._labels(frame) if v is not None}, key=_natural)

    def assign(self, frame: pd.DataFrame) -> np.ndarray:
        """Group id per row (-1 for unknown, out-of-bin or unlisted values)."""
        lookup = {g: i for i, g in enumerate(self.groups)}
        return np.array([lookup.get(v, UNKNOWN) if v is not None else UNKNOWN for v in self._labels(frame)],
                        dtype=np.int64)

    def counts(self, frame: pd.DataFrame, by: str | None = "split") -> pd.DataFrame:
        """Samples per group (columns, 'unknown' included), per value of `by` (rows) if present."""
        names = pd.Series([self.name(int(g)) for g in self.assign(frame)], index=frame.index, name="group")
        keys = frame[by] if by and by in frame.columns else pd.Series("all", index=frame.index, name="split")
        table = pd.crosstab(keys, names)
        order = [s for s in ("train", "val", "test") if s in table.index]
        table = table.reindex(index=order + [s for s in table.index if s not in order])
        return table.reindex(columns=[*self.groups, "unknown"], fill_value=0)

    def warn_small(self, frame: pd.DataFrame) -> list[str]:
        """One SmallGroupWarning listing every group with fewer than `min_size` samples in a split."""
        small = []
        table = self.counts(frame)
        for split, row in table.iterrows():
            small += [f"{g} in {split} ({row[g]})" for g in self.groups
                      if 0 < row[g] < self.min_size or (row[g] == 0 and split != "all")]
        if small:
            warnings.warn(f"'{self.attribute}': small group(s) (< {self.min_size} samples, metrics unreliable): "
                          + ", ".join(small), SmallGroupWarning, stacklevel=3)
        return small

    def require_groups(self, frame: pd.DataFrame, splits: tuple[str, ...] = ("train",), source: str = "") -> None:
        """InputError if a split has fewer than 2 known groups (group-aware methods need 2)."""
        labels = self._labels(frame)
        if self.groups:
            labels = [v if v in self.groups else None for v in labels]
        for split in splits:
            sel = (frame["split"] == split).to_numpy() if "split" in frame.columns else np.ones(len(frame), bool)
            present = sorted({v for v, s in zip(labels, sel, strict=True) if s and v is not None})
            if len(present) < 2:
                where = f"{source}: " if source else ""
                raise InputError(f"{where}split '{split}' has {len(present)} known group(s) {present} for "
                                 f"'{self.attribute}'; group-aware methods need at least 2")

    # ---- internals ----------------------------------------------------------------------
    def _labels(self, frame: pd.DataFrame) -> list[str | None]:
        if self.parts is not None:
            cols = [p._labels(frame) for p in self.parts]
            return [None if any(v is None for v in vals) else JOIN.join(vals) for vals in zip(*cols, strict=True)]
        raw = _raw(frame, self.attribute)
        if self.bins is None:
            return raw
        factor = UNITS[self.unit]
        out: list[str | None] = []
        for v in raw:
            x = _to_float(v)
            if x is None:
                out.append(None)
                continue
            k = int(np.searchsorted(self.bins, x * factor, side="right")) - 1
            out.append(self.groups[k] if 0 <= k < len(self.groups) else None)
        return out


def _raw(frame: pd.DataFrame, column: str) -> list[str | None]:
    """Normalised string values of a column (None for unknown)."""
    if column not in frame.columns:
        raise InputError(f"attribute column '{column}' not found (columns: {', '.join(map(str, frame.columns))})")
    out: list[str | None] = []
    for v in frame[column].tolist():
        s = None if v is None or (isinstance(v, float) and np.isnan(v)) else str(v).strip()
        if s is not None and s.endswith(".0") and s[:-2].lstrip("-").isdigit():
            s = s[:-2]
        out.append(None if s is None or s.lower() in _UNKNOWN_STRINGS else s)
    return out


def _to_float(v: str | None) -> float | None:
    if v is None:
        return None
    try:
        x = float(v)
    except ValueError:
        return None
    return x if math.isfinite(x) else None


def _edge(e, attribute: str) -> float:
    try:
        return float(e)
    except (TypeError, ValueError):
        raise InputError(f"group spec '{attribute}': bin edge '{e}' is not a number (use inf for no bound)") from None


def _bin_label(lo: float, hi: float) -> str:
    if math.isinf(hi):
        return f"{lo:g}+"
    if math.isinf(lo):
        return f"<{hi:g}"
    return f"{lo:g}-{hi:g}"


def _natural(s: str) -> tuple:
    """Numbers in numeric order, then strings (so 2 < 10)."""
    x = _to_float(s)
    return (0, x, s) if x is not None else (1, 0.0, s)


def build_group_spec(attributes: Sequence[str], groups: str | None, patch_groups: dict | None = None) -> GroupSpec:
    """The GroupSpec from --attribute (one or more; several mean their intersection) and/or --groups."""
    spec: GroupSpec | None = None
    if groups:
        path = Path(groups)
        if path.suffix.lower() in (".yaml", ".yml", ".json") or path.is_file():
            if not path.is_file():
                raise InputError(f"{path}: group spec file not found")
            try:
                spec = GroupSpec.from_dict(yaml.safe_load(path.read_text(encoding="utf-8")))
            except yaml.YAMLError as exc:
                raise InputError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
        else:
            spec = GroupSpec.parse(groups)
    if attributes:
        from_attrs = GroupSpec.parse("*".join(attributes)) if len(attributes) > 1 else GroupSpec.parse(attributes[0])
        if spec is None:
            spec = from_attrs
        elif sorted(spec.attributes) != sorted(from_attrs.attributes):
            raise InputError(f"--groups '{groups}' reads column(s) {list(spec.attributes)} but --attribute names "
                             f"{list(from_attrs.attributes)}; give one of them, or the same columns")
    if spec is None and patch_groups:
        spec = GroupSpec.from_dict(patch_groups)
    if spec is None:
        raise InputError("no sensitive attribute: give --attribute (e.g. --attribute sex) or --groups")
    return spec
