"""Atomic file writing, safe checkpoint I/O, state-dict hashing and the fingerprints of a model and a data set.

Every file a run writes goes through these helpers, so that a killed process never
leaves a half-written file behind (write to a temporary file, then rename).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from applefair.errors import InputError, as_output_error

_UMASK = os.umask(0o022)  # read the process umask (restored at once): written files get the usual mode
os.umask(_UMASK)


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to `path`; rename it onto `path` only on success.

    On failure the temporary file is removed; a disk-full / permission / read-only error becomes
    an `OutputError` naming `path` (one line for the user, exit code 1).
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; a run's files should read like any other file
    except OSError as exc:
        err = as_output_error(exc, path)
        if err is None:
            raise
        raise err from None
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    except Exception as exc:
        err = as_output_error(exc, path)
        if err is None or err is exc:
            raise
        raise err from None
    finally:
        _remove_quietly(tmp_path)


def _remove_quietly(path: Path) -> None:
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        elif path.exists() or path.is_symlink():
            path.unlink()
    except OSError:
        pass


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def write_yaml(path: str | os.PathLike, obj: Any) -> None:
    plain = json.loads(json.dumps(obj, default=_json_default))  # str subclasses, tuples -> plain types
    write_text(path, yaml.safe_dump(plain, sort_keys=False))


def write_csv(path: str | os.PathLike, frame) -> None:
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)


def _json_default(o: Any) -> Any:
    if hasattr(o, "item"):
        return o.item()
    if isinstance(o, (Path, str)):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def save_tensors(path: str | os.PathLike, tensors: Mapping[str, torch.Tensor],
                 metadata: Mapping[str, str] | None = None) -> None:
    """Save tensors as safetensors (never pickle), atomically."""
    clean = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    with atomic_path(path) as tmp:
        save_file(clean, str(tmp), metadata=dict(metadata or {}))


def load_tensors(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Load a safetensors file; a missing or corrupt file is an InputError."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: file not found (expected a .safetensors checkpoint)")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise InputError(f"{path}: not a readable safetensors file ({exc})") from None


def state_dict_hash(module: torch.nn.Module) -> str:
    """SHA-256 over every parameter and buffer (names, dtypes, shapes, bytes).

    Used to prove that the deployed segmentor is bit-identical after mitigation.
    """
    h = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(name.encode())
        h.update(str(t.dtype).encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


@contextmanager
def staged_dir(out: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Build a run folder in a sibling temporary folder and move it into place at the end.

    If the work fails, nothing is left at `out` (and an earlier run there is untouched).
    Under torchrun, use cases give the other ranks a scratch folder instead
    (`applefair.engine.distributed.rank_stage`).
    """
    out = Path(out)
    _check_out(out, overwrite)
    stage = _storage(out, lambda: _make_stage(out))
    try:
        yield stage
        _storage(out, lambda: _publish(stage, out))
    except Exception as exc:
        _reraise_storage(exc, out)
        raise
    finally:
        _remove_quietly(stage)


RESUME_SUFFIX = ".resume.partial"


def resume_stage(out: str | os.PathLike) -> Path:
    """Where a resumable run of `out` is built: the fixed hidden sibling `.NAME.resume.partial`."""
    out = Path(out)
    return out.parent / f".{out.name}{RESUME_SUFFIX}"


@contextmanager
def resumable_dir(out: str | os.PathLike, marker: str, overwrite: bool = False,
                  resume: bool = False) -> Iterator[tuple[Path, bool]]:
    """Like `staged_dir`, for runs that checkpoint: yields (stage, resuming).

    The stage has a fixed name (`resume_stage(out)`), so a run killed after writing its checkpoint
    `marker` into it leaves it behind for `resume=True` to continue. A run that fails keeps the
    stage only if it holds `marker` (so it can be resumed), else removes it; a finished run moves
    it to `out`. `out` itself is never half-written. Without `resume`, a stage holding a
    checkpoint is bad input unless `overwrite` (then it is discarded).
    """
    out = Path(out)
    stage = resume_stage(out)
    resuming = resume and (stage / marker).is_file()
    if resume and not resuming:
        if stage.is_dir():  # killed before its first checkpoint: start again
            _remove_quietly(stage)
        elif out.is_dir() and any(out.iterdir()):
            raise InputError(f"{out}: --resume given, but the run there has finished (nothing to resume)")
        else:
            raise InputError(f"{out}: --resume given, but no interrupted run of it was found "
                             f"(no {stage.name}/{marker}); run without --resume")
    if not resume and (stage / marker).is_file():
        if not overwrite:
            raise InputError(f"{out}: an interrupted run left its checkpoint in {stage} "
                             "(use --resume to continue it, or --overwrite to start again)")
    _check_out(out, overwrite)
    if not resuming:
        _remove_quietly(stage)
    _storage(out, lambda: stage.mkdir(parents=True, exist_ok=True))
    try:
        yield stage, resuming
        _storage(out, lambda: _publish(stage, out))
    except Exception as exc:
        _reraise_storage(exc, out)
        raise
    finally:
        if stage.exists() and not (stage / marker).is_file():
            _remove_quietly(stage)


def _check_out(out: Path, overwrite: bool) -> None:
    if out.exists() and not overwrite:
        if not out.is_dir() or any(out.iterdir()):
            raise InputError(f"{out}: output folder exists and is not empty (use --overwrite to replace it)")


def _make_stage(out: Path) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))


def _storage(out: Path, fn):
    """Run `fn`; a disk-full / permission / read-only error becomes an OutputError naming `out`."""
    try:
        return fn()
    except OSError as exc:
        err = as_output_error(exc, out)
        if err is None:
            raise
        raise err from None


def _reraise_storage(exc: Exception, out: Path) -> None:
    """Raise a disk-full / permission error from a run's work as one OutputError (the OS's file, else `out`);
    return for anything else. The work reads files too, so only the OS's own file name is trusted here."""
    err = as_output_error(exc)
    if err is None or err is exc:
        return
    if err.filename is None:
        err = as_output_error(exc, out)
    raise err from None


def _publish(stage: Path, out: Path) -> None:
    """Move the finished `stage` onto `out` (an earlier folder there is replaced only at the very end)."""
    if out.exists():
        trash = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=out.parent))
        os.replace(out, trash / "old")
        shutil.rmtree(trash, ignore_errors=True)
    os.replace(stage, out)


def json_safe(obj):
    """NaN and +-inf become null (strict JSON); numpy scalars become Python numbers."""
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


def folder_hash(path: str | os.PathLike) -> str:
    """SHA-256 over every file (relative name and bytes) under `path`."""
    h = hashlib.sha256()
    root = Path(path)
    for p in sorted(q for q in root.rglob("*") if q.is_file()):
        h.update(str(p.relative_to(root)).encode())
        h.update(p.read_bytes())
    return h.hexdigest()


def model_fingerprint(net: torch.nn.Module) -> str:
    """SHA-256 of the weights (`state_dict_hash`), the architecture (`repr`) and every module's plain
    settings (input size, normalisation, ...): what the frozen encoder's outputs depend on."""
    h = hashlib.sha256(state_dict_hash(net).encode())
    h.update(repr(net).encode())
    for name, mod in net.named_modules():
        plain = {k: v for k, v in vars(mod).items() if not k.startswith("_") and k != "training"
                 and isinstance(v, (str, int, float, bool, tuple))}
        h.update(f"{name}:{sorted(plain.items())!r}".encode())
    return h.hexdigest()


def data_fingerprint(dataset) -> str:
    """SHA-256 of what the samples are: the dataset's own `fingerprint()` if it has one; for a manifest
    dataset its rows' files (path, size, modification time), resizing and loading options (cheap, no
    decoding); otherwise every image's bytes (one pass over the data)."""
    own = getattr(dataset, "fingerprint", None)
    if callable(own):
        return str(own())
    h = hashlib.sha256(f"{type(dataset).__name__}:{len(dataset)}".encode())
    frame = getattr(dataset, "frame", None)
    cols = [c for c in ("image_path", "mask_path", "image_key", "mask_key", "slice", "axis")
            if frame is not None and c in frame.columns]
    if "image_path" in cols:
        h.update(frame[cols].to_csv(index=False).encode())
        for p in frame["image_path"].tolist() + (frame["mask_path"].tolist() if "mask_path" in cols else []):
            st = os.stat(p)
            h.update(f"{st.st_size}:{st.st_mtime_ns}".encode())
        options = getattr(dataset, "options", None)
        h.update(repr((getattr(dataset, "size", None), options.to_dict() if options is not None else None)).encode())
        return h.hexdigest()
    for i in range(len(dataset)):
        h.update(dataset[i]["image"].detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()
