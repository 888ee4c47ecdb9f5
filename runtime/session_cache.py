"""The session cache: a graph as onnxruntime optimized it for this machine, with its weights
already packed for the CPU kernels, saved once so that later opens skip both steps.

Scope: where a graph's cache entry lives, whether an entry is usable, and writing one. Opening a
bundle graph spends most of its time in onnxruntime re-running the graph optimizers and re-packing
every weight matrix into its kernels' layout; onnxruntime can save the result
(`optimized_model_filepath` with `session.save_external_prepacked_constant_initializers`), and a
session opened on what it saved gives the same outputs, bit for bit (tests/test_session_cache.py).
What it saves is specific to the onnxruntime version and the CPU (onnxruntime says so when it
writes it), so the entry is keyed on both, on the graph's files (their checksums in the manifest)
and on the session settings that change the optimized graph.

Layout: `<cache>/<key hash>/entry.json`, `graph.onnx`, `graph.onnx.data`. An entry is written
into a temporary directory beside it and renamed into place only when complete, so a crash or a
full disk leaves no entry that looks usable, and two processes filling the same entry at once
leave one. An entry is used only when `entry.json` holds exactly the key asked for and the files'
size, times, inode and device are those it recorded (the bundle's verified-stamp test,
runtime/stamp.py; the data is not re-hashed: that would cost most of what the cache saves).
Anything else (missing, damaged, stale, a graph onnxruntime cannot open) is rebuilt from the
bundle, with a log line; failing to write an entry never fails the open. CPU sessions only: the
CUDA provider packs nothing of this kind. Entries are never deleted except when found damaged
(and staging directories a killed open left, after `STALE_STAGING_S`); removing the directory
clears the cache.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import platform
import secrets
import shutil
import stat
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnxruntime as ort

from inbedder.errors import InputError

from .stamp import file_key

CACHE_FORMAT = "inbedder-session-cache"
CACHE_VERSION = 1
ENTRY_NAME = "entry.json"
GRAPH_NAME = "graph.onnx"
DATA_NAME = "graph.onnx.data"
MAX_ENTRY_BYTES = 1 << 16
# A staging directory this much older than its last write was left by a killed open (a live one
# is written within seconds: the largest graphs save in well under a minute).
STALE_STAGING_S = 3600
log = logging.getLogger("inbedder")


def cache_root(cache: object) -> Path | None:
    """The `session_cache` argument as a directory (created when missing), or None (no cache)."""
    if cache is None:
        return None
    if isinstance(cache, bool) or not isinstance(cache, (str, os.PathLike)):
        raise InputError(f"session_cache must be a directory path or None, got {cache!r}")
    if not str(cache):
        raise InputError("session_cache must be a directory path or None, got ''")
    root = Path(cache).expanduser()
    if root.exists() and not root.is_dir():
        raise InputError(f"session_cache {str(root)!r} is not a directory")
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        why = e.strerror or type(e).__name__
        raise InputError(f"session_cache {str(root)!r} cannot be used as a directory ({why})") from None
    return root


def cpu_identity() -> dict[str, str]:
    """What the saved graph's kernels and packed layouts may depend on: the machine type and,
    where /proc/cpuinfo tells them, the CPU's vendor, family, model and feature flags."""
    ident = {"machine": platform.machine()}
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        ident["processor"] = platform.processor()
        return ident
    first = text.split("\n\n", 1)[0]  # the first logical CPU's block
    for line in first.splitlines():
        name, sep, value = line.partition(":")
        name = name.strip()
        if sep and name in ("vendor_id", "cpu family", "model", "flags", "Features", "CPU part"):
            value = value.strip()
            # Flags in a fixed order, hashed: the entry stays small and the order cannot matter.
            if name in ("flags", "Features"):
                value = hashlib.sha256(" ".join(sorted(value.split())).encode()).hexdigest()
            ident[name] = value
    return ident


@dataclass(frozen=True)
class CacheSlot:
    """One graph's place in the cache: the key its entry must hold and where that entry lives."""

    key: Mapping[str, Any]
    entry: Path  # the entry's directory

    @classmethod
    def for_graph(
        cls,
        root: Path,
        files: Mapping[str, Mapping[str, Any]],
        graph_files: Sequence[str],
        settings: Mapping[str, Any],
    ) -> CacheSlot:
        """The slot of the graph made of `graph_files` (bundle names; their checksums come from the
        manifest's `files`), opened with `settings` (what else shapes the optimized graph)."""
        key = {
            "format": CACHE_FORMAT,
            "version": CACHE_VERSION,
            "onnxruntime": ort.__version__,
            "cpu": cpu_identity(),
            "graph": {f: {"sha256": files[f]["sha256"], "bytes": files[f]["bytes"]} for f in graph_files},
            "settings": dict(settings),
        }
        digest = hashlib.sha256(json.dumps(key, sort_keys=True, separators=(",", ":")).encode())
        return cls(key=key, entry=root / digest.hexdigest()[:32])

    def lookup(self) -> Path | None:
        """The entry's graph if the entry is complete, holds this key and its files are as written;
        else None (a damaged or foreign entry is removed, so that it is rebuilt)."""
        meta = self.entry / ENTRY_NAME
        why: str | None
        try:
            st = os.lstat(meta)
        except FileNotFoundError:
            if not os.path.lexists(self.entry):
                return None
            why = f"{ENTRY_NAME} is missing"  # a directory no commit made: it would block the rename
        except OSError as e:
            log.warning("session cache %s: unreadable (%s); not used", self.entry, e.strerror)
            return None
        else:
            why = self._check(meta, st)
        if why is None:
            return self.entry / GRAPH_NAME
        log.warning("session cache %s: %s; rebuilding it", self.entry, why)
        self.discard()
        return None

    def _check(self, meta: Path, st: os.stat_result) -> str | None:
        if not stat.S_ISREG(st.st_mode) or st.st_size > MAX_ENTRY_BYTES:
            return f"{ENTRY_NAME} is not a small regular file"
        try:
            doc = json.loads(meta.read_bytes())
        except (OSError, ValueError) as e:
            return f"{ENTRY_NAME} cannot be read ({e})"
        if not isinstance(doc, dict) or doc.get("key") != self.key:
            return f"{ENTRY_NAME} holds another key"
        recorded = doc.get("files")
        if not isinstance(recorded, dict) or GRAPH_NAME not in recorded:
            return f"{ENTRY_NAME} lists no {GRAPH_NAME}"
        present = {p.name for p in self.entry.iterdir()} - {ENTRY_NAME}
        if present != set(recorded):
            return f"its files {sorted(present)} are not the ones recorded {sorted(recorded)}"
        for name, want in recorded.items():
            try:
                fst = os.lstat(self.entry / name)
            except OSError:
                return f"{name} is missing"
            if not stat.S_ISREG(fst.st_mode) or file_key(fst) != want:
                return f"{name} changed since it was written"
        return None

    def discard(self) -> None:
        """Remove the entry (an unusable one); a failure leaves it, to be retried next open."""
        with contextlib.suppress(OSError):
            shutil.rmtree(self.entry)

    def staging(self) -> Path | None:
        """A fresh temporary directory beside the entry to save the optimized graph into, or None
        when the cache directory cannot be written (the open goes on without caching). Staging
        directories of this entry that a killed open left behind are removed first."""
        prefix = f".{self.entry.name}.tmp-"
        with contextlib.suppress(OSError):
            now = time.time()
            for old in self.entry.parent.glob(prefix + "*"):
                if now - old.lstat().st_mtime > STALE_STAGING_S:
                    shutil.rmtree(old, ignore_errors=True)
        tmp = self.entry.parent / f"{prefix}{secrets.token_hex(4)}"
        try:
            tmp.mkdir()
        except OSError as e:
            log.warning("session cache %s: cannot be written (%s); not caching", self.entry.parent, e)
            return None
        return tmp

    def save_options(self, opts: ort.SessionOptions, tmp: Path) -> None:
        """Make the session being created with `opts` save its optimized graph into `tmp`."""
        opts.optimized_model_filepath = str(tmp / GRAPH_NAME)
        prefix = "session.optimized_model_external_initializers_"
        opts.add_session_config_entry(prefix + "file_name", DATA_NAME)
        opts.add_session_config_entry(prefix + "min_size_in_bytes", "1024")  # small ones stay inline
        opts.add_session_config_entry("session.save_external_prepacked_constant_initializers", "1")

    def commit(self, tmp: Path) -> None:
        """Turn the staging directory the session saved into the entry: record the files, then
        rename it into place. Any failure (a full disk, another process's entry already there)
        removes the staging directory and leaves the open as it was."""
        try:
            names = sorted(p.name for p in tmp.iterdir())
            if GRAPH_NAME not in names:
                raise OSError(f"onnxruntime saved no {GRAPH_NAME}")
            for n in names:  # on disk before the entry can be seen: a crash leaves no torn entry
                with open(tmp / n, "rb") as f:
                    os.fsync(f.fileno())
            files = {n: file_key(os.lstat(tmp / n)) for n in names}
            doc = {"format": CACHE_FORMAT, "version": CACHE_VERSION, "key": self.key, "files": files}
            with open(tmp / ENTRY_NAME, "x", encoding="utf-8") as f:
                json.dump(doc, f, indent=1, sort_keys=True)
                f.flush()
                os.fsync(f.fileno())
            os.rename(tmp, self.entry)  # fails when another process has put the entry in place
        except OSError as e:
            if not (self.entry / ENTRY_NAME).exists():
                log.warning("session cache %s: not written (%s)", self.entry, e)
            shutil.rmtree(tmp, ignore_errors=True)
