"""Run configuration: YAML files validated by pydantic models.

Every command follows one pattern (see docs/cli.md): its settings are a pydantic model
with ``extra="forbid"``; ``--config FILE`` loads a YAML file into it (unknown keys and
wrong types are one-line `InputError`s naming the key); options given on the command
line override the file; the resolved settings are written to the run folder's
``config.yaml``. Why: a config that silently ignores a misspelt key runs the wrong
experiment without telling anyone.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, ClassVar, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, StringConstraints, ValidationError

from applefair.errors import InputError

M = TypeVar("M", bound=BaseModel)

# what `--device` accepts everywhere (resolved by `applefair.engine.device.resolve_device`)
Device = Annotated[str, StringConstraints(pattern=r"^(auto|cpu|cuda(:[0-9]+)?)$")]


class _RaisesInputErrors(type(BaseModel)):
    """Construction in Python (`AppleConfig(epochs=0)`) raises the same one-line InputError as a file does."""

    def __call__(cls, *args: Any, **kwargs: Any):
        try:
            return super().__call__(*args, **kwargs)
        except ValidationError as exc:
            raise InputError(validation_message(exc, cls.label)) from None


class Settings(BaseModel, metaclass=_RaisesInputErrors):
    """Base of every configuration (commands, APPLE, the baselines' budget, trainers): unknown keys are an
    error, values are validated on construction and on assignment, and every error is one `InputError`
    line naming the key (``LABEL: key 'epochs': ...``), whether the values came from a file, the command
    line or Python."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)
    label: ClassVar[str] = "config"  # names the source in errors of values given in Python

    def __setattr__(self, name: str, value: Any) -> None:
        try:
            super().__setattr__(name, value)
        except ValidationError as exc:
            raise InputError(validation_message(exc, self.label)) from None

    def to_dict(self) -> dict:
        """Plain data (YAML/JSON-ready)."""
        return self.model_dump(mode="json")

    def replace(self, **changes: Any) -> Settings:
        """A validated copy with `changes` (None values are ignored: "not given")."""
        given = {k: v for k, v in changes.items() if v is not None}
        return validate_settings({**self.model_dump(), **given}, type(self), self.label)


def _format_loc(loc: tuple) -> str:
    return ".".join(str(p) for p in loc) if loc else "(top level)"


def validation_message(exc: ValidationError, source: str) -> str:
    """One line naming the first offending key and what was expected."""
    err = exc.errors()[0]
    key = _format_loc(tuple(err.get("loc", ())))
    kind = err.get("type", "")
    if kind == "extra_forbidden":
        return f"{source}: unknown key '{key}'"
    value = err.get("input")
    shown = repr(value) if not isinstance(value, (dict, list)) else type(value).__name__
    if len(shown) > 60:
        shown = shown[:57] + "..."
    msg = str(err.get("msg", "invalid value")).removeprefix("Value error, ")
    return f"{source}: key '{key}': {msg} (got {shown})"


def validate_settings(data: Mapping[str, Any], model: type[M], source: str = "config") -> M:
    """Validate a mapping into `model`; errors become a one-line InputError."""
    try:
        return model.model_validate(dict(data))
    except ValidationError as exc:
        raise InputError(validation_message(exc, source)) from None


def read_config_file(path: str | os.PathLike) -> dict[str, Any]:
    """The top-level mapping of a YAML config file (one-line InputErrors for a missing or malformed file)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: config file not found (expected a YAML file)")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"{path}: not valid YAML ({first})") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise InputError(f"{path}: expected a mapping of keys to values at the top level, "
                         f"got {type(data).__name__}")
    bad = [k for k in data if not isinstance(k, str)]
    if bad:
        raise InputError(f"{path}: key {bad[0]!r} is not a string")
    return data


def load_config(path: str | os.PathLike, model: type[M]) -> M:
    """Read a YAML file into `model` (a Settings model: unknown keys and wrong types are errors)."""
    return validate_settings(read_config_file(path), model, str(path))


def resolve_settings(model: type[M], config: str | os.PathLike | None = None, /, **overrides: Any) -> M:
    """Defaults < config file < command-line options (those not None).

    Typer options that may also come from the file default to None, so that "not given"
    can be told apart from "given with the default value".
    """
    base = load_config(config, model).model_dump() if config is not None else {}
    given = {k: v for k, v in overrides.items() if v is not None}
    return validate_settings({**base, **given}, model, "command line" if not config else str(config))
