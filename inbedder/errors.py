"""The package's errors: one base class, so callers (and the CLI) can tell a user's problem from a bug.

Scope: standard library only, importable from every stage. `InbedderError` is what inbedder raises
for anything a user can fix (a damaged bundle, an unknown option, a refused quantization); the CLI
prints those as one line and exits 2 (an `OSError`: one line, exit 1; Ctrl-C/SIGTERM: exit 130),
and lets every other exception show its traceback.
`InputError` and `InputTypeError` are also `ValueError` / `TypeError`, so code that catches the
built-in kinds keeps working.
"""

from __future__ import annotations


class InbedderError(Exception):
    """Base class of every error inbedder raises on purpose."""


class BundleError(InbedderError):
    """A bundle is missing, incomplete, corrupted or of a format this runtime does not read."""


class InputError(InbedderError, ValueError):
    """An argument's value is not accepted (named in the message)."""


class InputTypeError(InbedderError, TypeError):
    """An argument has the wrong type (named in the message, with the index of a bad item)."""


class DeviceError(InbedderError, RuntimeError):
    """The asked-for device cannot be used (e.g. CUDA without onnxruntime-gpu); never a silent
    fallback."""


class ExportValidationError(InbedderError):
    """The exported bundle disagrees with the PyTorch reference beyond the named tolerance."""


class QuantizationRefused(InbedderError):
    """The converted bundle drifts from its fp32 source past the bound; nothing was written."""


def surrogate_at(text: str) -> int | None:
    """Index of the first lone surrogate in `text` (not valid Unicode: tokenizers cannot take it),
    or None. O(len) in C, in 64 Ki-character chunks (no copy of a long text)."""
    if text.isascii():
        return None
    step = 1 << 16
    for i in range(0, len(text), step):
        try:
            text[i : i + step].encode("utf-8")
        except UnicodeEncodeError as e:  # strict UTF-8 fails on surrogates only
            return i + e.start
    return None
