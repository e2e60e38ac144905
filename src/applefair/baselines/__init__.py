"""Mitigation methods, one file each, one interface (`Method.fit`) shared with APPLE.

`get_method(name)` returns a method; `list_methods()` the names in the order tables use.
"""

from __future__ import annotations

from applefair.baselines.base import Budget, FitResult, Method
from applefair.errors import InputError

_ORDER = ("erm", "resampling", "groupdro", "febs", "adversarial", "subgroup", "faap", "apple")


def _classes() -> dict[str, type[Method]]:
    from applefair.baselines.adversarial import Adversarial
    from applefair.baselines.apple import Apple
    from applefair.baselines.erm import ERM
    from applefair.baselines.faap import FAAP
    from applefair.baselines.febs import FEBS
    from applefair.baselines.groupdro import GroupDRO
    from applefair.baselines.resampling import Resampling
    from applefair.baselines.subgroup import Subgroup

    return {c.name: c for c in (ERM, Resampling, GroupDRO, FEBS, Adversarial, Subgroup, FAAP, Apple)}


def list_methods() -> list[str]:
    return list(_ORDER)


def get_method(name: str) -> Method:
    """The method called `name` (an InputError lists the known names otherwise)."""
    classes = _classes()
    if name not in classes:
        raise InputError(f"method '{name}' is not known (expected one of: {', '.join(_ORDER)})")
    return classes[name]()


__all__ = ["Budget", "FitResult", "Method", "get_method", "list_methods"]
