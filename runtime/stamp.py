"""The verified-stamp: which bundle files were last hashed whole, so an open need not re-hash them.

Scope: reading and writing `.inbedder-verified`, a small JSON file kept in a bundle's directory
(the version directory for a versioned bundle) beside the files it vouches for, and the key that
says whether a file is still the one that was hashed. Standard library only, like `bundle.py`:
the native runtime reads the same file (format in the README, "Loading and the verified-stamp").

    {"format": "inbedder-verified", "version": 1,
     "files": {"model.onnx": {"sha256": "<64 hex>", "bytes": 123, "mtime_ns": 1, "ctime_ns": 2,
                              "ino": 3, "dev": 4}, ...}}

A file is taken as verified without hashing only when its entry's `sha256` and `bytes` equal the
manifest's record and its `mtime_ns`, `ctime_ns`, `ino` and `dev` equal the file's `lstat` now.
Anything else (no stamp, unreadable or damaged JSON, an unknown format or version, a link or a
non-regular file in its place, a missing or different entry) means: hash that file. The stamp is
written (atomically: a temporary file renamed over it) only after every file the manifest lists
matched its checksum, and holds only files whose status did not change while they were hashed and
whose last change is older than `RACY_NS` before the hashing began (a change within one timestamp
tick of the previous one would leave the key unchanged: such a file is hashed again next time).

What a stamp cannot see: a change that leaves size, mtime, ctime, inode and device as they were.
Writes through the file system always move ctime (and `os.utime` moves ctime when it restores
mtime), so that means damage below the file system (media errors, a crash that loses data but
keeps metadata) or someone setting the clock back and editing within one tick. `verify="full"`
re-hashes everything; anyone who can write the bundle directory can also write a stamp, so a stamp
is a guard against accidents, not against a local attacker.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import stat
from pathlib import Path
from typing import Any, Literal, get_args

STAMP_NAME = ".inbedder-verified"
STAMP_FORMAT = "inbedder-verified"
STAMP_VERSION = 1
MAX_STAMP_BYTES = 1 << 20
RACY_NS = 3_000_000_000  # coarser than any file system's timestamp tick (FAT: 2 s)
KEY_FIELDS = ("bytes", "mtime_ns", "ctime_ns", "ino", "dev")

Verify = Literal["stamp", "full", "none"]
VERIFY_MODES: tuple[Verify, ...] = get_args(Verify)
log = logging.getLogger("inbedder")


def verify_mode(verify: object) -> Verify:
    """`verify` as one of VERIFY_MODES: True is the default "stamp", False is "none"."""
    if verify is True:
        return "stamp"
    if verify is False:
        return "none"
    if isinstance(verify, str) and verify in VERIFY_MODES:
        return verify
    from inbedder.errors import InputError

    raise InputError(f"verify must be one of {list(VERIFY_MODES)} (or a bool), got {verify!r}")


def file_key(st: os.stat_result) -> dict[str, int]:
    """What identifies one state of a file: size, modification and change times, inode, device."""
    return {
        "bytes": st.st_size,
        "mtime_ns": st.st_mtime_ns,
        "ctime_ns": st.st_ctime_ns,
        "ino": st.st_ino,
        "dev": st.st_dev,
    }


def stampable(before: os.stat_result, after: os.stat_result, started_ns: int) -> bool:
    """Whether a file hashed between `before` and `after` (stats of the same path and of the open
    file) may go in the stamp: unchanged meanwhile, and last changed clearly before hashing began."""
    return (
        file_key(before) == file_key(after)
        and max(before.st_mtime_ns, before.st_ctime_ns) < started_ns - RACY_NS
    )


def read_stamp(root: Path) -> dict[str, dict[str, Any]]:
    """The stamp's entries, or {} for anything but a well-formed stamp (never an error: the
    caller then hashes every file)."""
    path = root / STAMP_NAME
    try:
        st = os.lstat(path)
        if not stat.S_ISREG(st.st_mode) or st.st_size > MAX_STAMP_BYTES:
            return {}
        flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
        fd = os.open(path, flags)
        with open(fd, "rb") as f:
            raw = json.loads(f.read(MAX_STAMP_BYTES + 1).decode("utf-8"))
    except (OSError, ValueError, RecursionError):
        return {}
    if not isinstance(raw, dict) or raw.get("format") != STAMP_FORMAT or raw.get("version") != STAMP_VERSION:
        return {}
    files = raw.get("files")
    if not isinstance(files, dict):
        return {}
    out = {}
    for name, rec in files.items():
        if (
            isinstance(rec, dict)
            and isinstance(rec.get("sha256"), str)
            and all(type(rec.get(k)) is int for k in KEY_FIELDS)
        ):
            out[name] = {"sha256": rec["sha256"], **{k: rec[k] for k in KEY_FIELDS}}
    return out


def stamp_entry(sha256: str, st: os.stat_result) -> dict[str, Any]:
    return {"sha256": sha256, **file_key(st)}


def write_stamp(root: Path, entries: dict[str, dict[str, Any]]) -> bool:
    """Replace the stamp in `root` by one holding `entries`, atomically; False (and the stamp left
    as it was) when it cannot be written (a read-only bundle, a full disk): opens then hash."""
    data = json.dumps({"format": STAMP_FORMAT, "version": STAMP_VERSION, "files": entries}, indent=1)
    tmp = root / f"{STAMP_NAME}.{secrets.token_hex(4)}.tmp"
    try:
        fd = _create(tmp)
        try:
            with open(fd, "w", encoding="utf-8") as f:
                f.write(data + "\n")
            os.replace(tmp, root / STAMP_NAME)
        finally:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
    except OSError as e:
        log.info("inbedder: cannot write %s (%s); each open of this bundle hashes it whole", tmp.parent, e)
        return False
    return True


def _create(path: Path) -> int:
    """A new file, never through a link (fails in a read-only directory)."""
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o644)


def is_stamp_file(name: str) -> bool:
    """The stamp or one of its temporary files (never a bundle file)."""
    return name == STAMP_NAME or (name.startswith(STAMP_NAME + ".") and name.endswith(".tmp"))
