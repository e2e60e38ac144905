"""GroupSpec: how raw attribute values become group ids.

A group id is an int in [0, K); -1 means unknown (missing value). Unknown samples count
in overall metrics but are excluded from group metrics and from group-aware losses.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from applefair.errors import InputError

UNKNOWN = -1
_UNKNOWN_STRINGS = {"", "nan", "none", "null", "unknown", "-1", "na", "n/a"}


@dataclass
class GroupSpec:
    """A categorical grouping of one attribute column.

    `groups` lists the group names in a fixed order (their ids); when omitted it is
    learned from the data (sorted distinct known values).
    """

    attribute: str
    groups: list[str] = field(default_factory=list)

    def fit(self, frame: pd.DataFrame) -> GroupSpec:
        """Fix the group order from the data if it was not given."""
        values = self._raw(frame)
        if not self.groups:
            known = sorted({v for v in values if v is not None})
            self.groups = known
        if len(self.groups) < 2:
            raise InputError(f"column '{self.attribute}': found {len(self.groups)} group(s) "
                             f"{self.groups}, expected at least 2")
        return self

    def assign(self, frame: pd.DataFrame) -> np.ndarray:
        """Group id per row (-1 for unknown or unlisted values)."""
        lookup = {g: i for i, g in enumerate(self.groups)}
        return np.array([lookup.get(v, UNKNOWN) if v is not None else UNKNOWN for v in self._raw(frame)],
                        dtype=np.int64)

    @property
    def num_groups(self) -> int:
        return len(self.groups)

    def name(self, gid: int) -> str:
        return "unknown" if gid == UNKNOWN else self.groups[gid]

    def to_dict(self) -> dict:
        return {"attribute": self.attribute, "groups": list(self.groups)}

    @classmethod
    def from_dict(cls, d: dict) -> GroupSpec:
        return cls(attribute=d["attribute"], groups=list(d.get("groups", [])))

    def _raw(self, frame: pd.DataFrame) -> list[str | None]:
        if self.attribute not in frame.columns:
            raise InputError(f"attribute column '{self.attribute}' not found "
                             f"(columns: {', '.join(map(str, frame.columns))})")
        out: list[str | None] = []
        for v in frame[self.attribute].tolist():
            s = None if v is None or (isinstance(v, float) and np.isnan(v)) else str(v).strip()
            if s is not None and s.endswith(".0") and s[:-2].lstrip("-").isdigit():
                s = s[:-2]
            out.append(None if s is None or s.lower() in _UNKNOWN_STRINGS else s)
        return out
