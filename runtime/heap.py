"""Give the C heap's free pages back to the operating system.

Scope: one call, `release_free_memory()`, made by the open between the tokenizer's parse and the
sessions' load. Parsing a tokenizer's JSON (3.5 MB for a 50k BPE vocabulary) leaves tens of MB of
freed heap that glibc keeps mapped; the weights then load on top of it, and the process's peak
resident memory carries it (the roberta-large-shaped int8 bundle: README "Against CTranslate2",
"Peak memory at the open"). glibc's `malloc_trim` returns those pages; elsewhere (musl, macOS,
Windows) there is no such call and nothing is done.
"""

from __future__ import annotations

import ctypes
import sys


def release_free_memory() -> bool:
    """Return the C heap's free pages to the OS (glibc's `malloc_trim(0)`); True if it was done."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None)  # the process's own symbols: glibc's when it is the C library
    except OSError:
        return False
    trim = getattr(libc, "malloc_trim", None)
    if trim is None:  # not glibc
        return False
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    trim(0)
    return True
