"""A keyed, resumable store of row arrays on disk: named arrays of `n` rows in memory-mapped .npy files.

Made for data too large for memory that is expensive to compute and the same for every run that
asks with the same key (APPLE's latent cache: the frozen encoder's outputs for every image). A
store is one folder holding

    store.json   the key, the arrays' shapes and dtypes, whether every row is written (`complete`)
    filled.npy   one byte per row: 1 once the row's values are written and flushed to the file
    NAME.npy     one memory-mapped array per name, rows in the store's order
    build.lock   taken (flock) by the one process that writes; others wait, then read

Rows are written in any order and marked only after their values are flushed, so a process
killed mid-build leaves a store whose marked rows are all valid: the next builder fills only
the rest. Reading maps the files (page cache the kernel can drop), so reading does not grow
the process's anonymous memory with the number of rows.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np

from applefair.engine.io import write_json
from applefair.engine.runfolder import STORE_FILLED, STORE_LOCK, STORE_META
from applefair.errors import InputError

FORMAT = 1


class ArrayStore:
    """One store folder (see the module doc). `arrays` maps each name to (row shape, numpy dtype)."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)

    # ------------------------------------------------------------------ state

    def meta(self) -> dict | None:
        """store.json's content, or None where there is no store yet (or it cannot be read)."""
        try:
            return json.loads((self.folder / STORE_META).read_text())
        except (OSError, ValueError):
            return None

    def matches(self, key: str) -> bool:
        meta = self.meta()
        return meta is not None and meta.get("format") == FORMAT and meta.get("key") == key

    def complete(self, key: str) -> bool:
        """Every row written, for this key."""
        meta = self.meta()
        return self.matches(key) and bool(meta.get("complete"))

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Exclusive while inside (fcntl.flock on build.lock): one writer per store, across processes.

        Where flock is not available (Windows) or not honoured (some network file systems) nothing is
        locked: give each process its own folder there."""
        self.folder.mkdir(parents=True, exist_ok=True)
        with open(self.folder / STORE_LOCK, "a+") as fh:
            try:
                import fcntl
            except ImportError:  # pragma: no cover - not on Linux/macOS
                yield
                return
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)

    # ------------------------------------------------------------------ writing

    def create(self, key: str, n: int, arrays: Mapping[str, tuple[tuple[int, ...], str]],
               info: Mapping | None = None) -> None:
        """A new, empty store for `key` (an existing store of another key in this folder is replaced)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        for name, (shape, dtype) in arrays.items():
            _check_name(name)
            np.lib.format.open_memmap(self.folder / f"{name}.npy", mode="w+", dtype=np.dtype(dtype),
                                      shape=(n, *shape)).flush()
        np.lib.format.open_memmap(self.folder / STORE_FILLED, mode="w+", dtype=np.uint8, shape=(n,)).flush()
        write_json(self.folder / STORE_META, {
            "format": FORMAT, "key": key, "n": int(n), "complete": False, "info": dict(info or {}),
            "arrays": {k: {"shape": list(s), "dtype": np.dtype(d).str} for k, (s, d) in arrays.items()}})

    def missing(self) -> np.ndarray:
        """Rows not yet written (sorted)."""
        filled = np.load(self.folder / STORE_FILLED, mmap_mode="r")
        return np.flatnonzero(filled == 0)

    def writer(self) -> StoreWriter:
        """Open the arrays for writing rows (see `StoreWriter.write`)."""
        return StoreWriter(self)

    def finish(self) -> None:
        """Mark the store complete once every row is written."""
        meta = self.meta()
        if meta is None or len(self.missing()):
            raise RuntimeError(f"{self.folder}: cannot finish a store with rows still missing")
        write_json(self.folder / STORE_META, {**meta, "complete": True})

    # ------------------------------------------------------------------ reading

    def open(self) -> dict[str, np.ndarray]:
        """Every array, memory-mapped read-only."""
        meta = self.meta()
        if meta is None:
            raise InputError(f"{self.folder}: no array store here")
        return {name: np.load(self.folder / f"{name}.npy", mmap_mode="r") for name in meta["arrays"]}


class StoreWriter:
    """Writes rows into a store's arrays; a row counts (filled.npy) only after its values are flushed."""

    def __init__(self, store: ArrayStore):
        meta = store.meta()
        if meta is None:
            raise InputError(f"{store.folder}: no array store here")
        self.arrays = {name: np.load(store.folder / f"{name}.npy", mmap_mode="r+") for name in meta["arrays"]}
        self.filled = np.load(store.folder / STORE_FILLED, mmap_mode="r+")

    def write(self, rows: np.ndarray, values: Mapping[str, np.ndarray]) -> None:
        """Rows `rows` of every array; all arrays at once (a row is marked only when all of them hold it)."""
        for name, v in values.items():
            self.arrays[name][rows] = v
        for a in self.arrays.values():
            a.flush()
        self.filled[rows] = 1
        self.filled.flush()


def _check_name(name: str) -> None:
    if not name or "/" in name or name.startswith(".") or name in (STORE_FILLED, STORE_META, STORE_LOCK):
        raise ValueError(f"array store: bad array name {name!r}")
