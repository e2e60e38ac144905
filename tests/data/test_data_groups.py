"""GroupSpec: categorical, binned (with units), intersectional, unknowns, CLI strings and YAML."""

from __future__ import annotations

import math
import warnings

import pandas as pd
import pytest
import yaml

from applefair.data import GroupSpec, SmallGroupWarning
from applefair.errors import InputError


def _frame():
    return pd.DataFrame({
        "sex": ["F", "M", "M", "", "F", "M", "unknown", "F"],
        "age": ["35", "61", "45.5", "70", "-1", "abc", "59.99", "nan"],
        "split": ["train"] * 4 + ["test"] * 4,
    })


def test_categorical_learned_and_fixed_order():
    f = _frame()
    g = GroupSpec("sex").fit(f)
    assert g.groups == ["F", "M"] and g.assign(f).tolist() == [0, 1, 1, -1, 0, 1, -1, 0]
    fixed = GroupSpec.parse("sex=M,F").fit(f)
    assert fixed.groups == ["M", "F"] and fixed.assign(f).tolist()[:2] == [1, 0]
    assert fixed.name(-1) == "unknown"


def test_binned_edges_labels_and_unknowns():
    f = _frame()
    g = GroupSpec.parse("age:0,40,60,inf")
    assert g.groups == ["0-40", "40-60", "60+"] and g.bins[-1] == math.inf
    # -1, text, NaN are unknown; 59.99 falls in [40, 60)
    assert g.assign(f).tolist() == [0, 2, 1, 2, -1, -1, 1, -1]
    lab = GroupSpec.parse("age:0,60,inf:young,old")
    assert lab.groups == ["young", "old"] and lab.assign(f).tolist()[:4] == [0, 1, 0, 1]
    with pytest.raises(InputError, match="at least 2 bins"):
        GroupSpec.parse("age:40,60")  # one bin is not a grouping
    assert GroupSpec.parse("age:40,50,60").assign(f).tolist() == [-1, -1, 0, -1, -1, -1, 1, -1]
    with pytest.raises(InputError, match="increasing"):
        GroupSpec.parse("age:60,40,inf")
    with pytest.raises(InputError, match="not a number"):
        GroupSpec.parse("age:0,sixty,inf")
    with pytest.raises(InputError, match="label"):
        GroupSpec.parse("age:0,60,inf:a,b,c")


def test_days_to_years():
    f = pd.DataFrame({"age": [str(365.25 * 30), str(365.25 * 70), "-1"], "split": ["train"] * 3})
    g = GroupSpec.parse("age@days:0,60,inf")
    assert g.assign(f).tolist() == [0, 1, -1]
    with pytest.raises(InputError, match="unit"):
        GroupSpec.parse("age@weeks:0,60,inf")


def test_intersectional_two_and_three_attributes():
    f = _frame()
    g = GroupSpec.parse("sex*age:0,60,inf").fit(f)
    assert g.attribute == "sex*age" and g.attributes == ["sex", "age"]
    assert set(g.groups) <= {"F|0-60", "F|60+", "M|0-60", "M|60+"} and "M|60+" in g.groups
    ids = g.assign(f)
    assert ids[3] == -1 and ids[4] == -1  # unknown sex or unknown age -> unknown
    assert g.name(int(ids[1])) == "M|60+" and g.name(int(ids[0])) == "F|0-60"
    f["site"] = ["a", "b"] * 4
    g3 = GroupSpec.parse("sex * site * age:0,60,inf").fit(f)
    assert g3.attributes == ["sex", "site", "age"] and all(x.count("|") == 2 for x in g3.groups)


def test_yaml_round_trip():
    for text in ("sex", "age@days:0,40,60,inf:a,b,c", "sex*age:0,60,inf"):
        g = GroupSpec.parse(text)
        d = yaml.safe_load(yaml.safe_dump(g.to_dict()))
        h = GroupSpec.from_dict(d)
        assert h.to_dict() == g.to_dict()
    y = yaml.safe_load("intersect: [sex, {attribute: age, bins: [0, 60, .inf], labels: [young, old]}]")
    g = GroupSpec.from_dict(y).fit(_frame())
    assert "M|old" in g.groups
    with pytest.raises(InputError, match="unknown key"):
        GroupSpec.from_dict({"attribute": "age", "edges": [0, 1]})


def test_small_group_warning_and_single_group_split():
    f = _frame()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        GroupSpec("sex", min_size=3).fit(f)
    assert any(issubclass(w.category, SmallGroupWarning) and "F in train (1)" in str(w.message) for w in caught)
    with warnings.catch_warnings():
        warnings.simplefilter("error", SmallGroupWarning)
        GroupSpec("sex", min_size=1).fit(f)  # no warning when every group is big enough
    g = GroupSpec("sex").fit(f)
    g.require_groups(f, ("train", "test"))
    one = f.assign(sex=["F", "F", "F", "F", "F", "M", "", "F"])
    with pytest.raises(InputError, match="split 'train' has 1 known group"):
        GroupSpec("sex").fit(one).require_groups(one, ("train",), source="m.csv")


def test_parse_errors_and_missing_column():
    with pytest.raises(InputError):
        GroupSpec.parse("")
    with pytest.raises(InputError):
        GroupSpec.parse("sex*")
    with pytest.raises(InputError, match="'height' not found"):
        GroupSpec("height").fit(_frame())
    with pytest.raises(InputError, match="at least 2"):
        GroupSpec("sex").fit(pd.DataFrame({"sex": ["F", "F"], "split": ["train", "test"]}))
