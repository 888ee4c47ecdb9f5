"""ONNX Runtime sessions: execution-provider choice and options.

Scope: "cpu" | "cuda" | "auto" -> providers, the CPU thread pool (`ThreadOptions`: how many
threads, whether they spin), opening through the session cache when given one
(runtime/session_cache.py), and a loud error (never a silent CPU fallback) when CUDA is asked for
and cannot be had.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

import onnxruntime as ort

from inbedder.errors import BundleError, DeviceError, InputError

from .session_cache import CacheSlot

Device = Literal["cpu", "cuda", "auto"]
DEVICES: tuple[Device, ...] = get_args(Device)
_CUDA = "CUDAExecutionProvider"
_CPU = "CPUExecutionProvider"
log = logging.getLogger("inbedder")


def cuda_available() -> bool:
    return _CUDA in ort.get_available_providers()


def resolve_device(device: str) -> str:
    if device not in DEVICES:
        raise InputError(f"device must be one of {DEVICES}, got {device!r}")
    if device == "auto":
        return "cuda" if cuda_available() else "cpu"
    if device == "cuda" and not cuda_available():
        raise DeviceError(
            "device='cuda' was asked for but onnxruntime has no CUDAExecutionProvider "
            f"(available: {', '.join(ort.get_available_providers())}). Install onnxruntime-gpu "
            "(and not onnxruntime) on a machine with an NVIDIA GPU, or use device='cpu'."
        )
    return device


def available_cores() -> int:
    """The logical CPUs this process may run on (its affinity mask, which `taskset`, cgroups'
    cpusets and container limits narrow), not the machine's count."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # no sched_getaffinity (macOS, Windows)
        return max(1, os.cpu_count() or 1)


@dataclass(frozen=True)
class ThreadOptions:
    """onnxruntime's CPU thread pool for one session.

    `threads`: intra-op threads (the caller's thread is one of them); None: `available_cores()`.
    `spinning`: whether idle pool threads busy-wait for the next operator's work
    (`session.intra_op.allow_spinning`, and the same for the inter-op pool) instead of sleeping.
    Spinning saves a wake-up per operator on an idle machine but burns cores other processes need
    and, when a core is taken by another process, leaves the pool waiting on a preempted spinner;
    off by default (README, "Benchmarks": the measured cost and gain).
    """

    threads: int | None = None
    spinning: bool = False

    def __post_init__(self) -> None:
        t = self.threads
        if t is not None and (not isinstance(t, int) or isinstance(t, bool) or t < 1):
            raise InputError(f"threads must be a positive int or None, got {t!r}")
        if not isinstance(self.spinning, bool):
            raise InputError(f"spinning must be True or False, got {self.spinning!r}")

    @property
    def intra_op_threads(self) -> int:
        return self.threads if self.threads is not None else available_cores()

    def apply(self, opts: ort.SessionOptions) -> None:
        opts.intra_op_num_threads = self.intra_op_threads
        opts.inter_op_num_threads = 1  # sequential execution: the inter-op pool is not used
        spin = "1" if self.spinning else "0"
        opts.add_session_config_entry("session.intra_op.allow_spinning", spin)
        opts.add_session_config_entry("session.inter_op.allow_spinning", spin)


def thread_options(threads: int | ThreadOptions | None) -> ThreadOptions:
    return threads if isinstance(threads, ThreadOptions) else ThreadOptions(threads)


# The settings of `session_options` that shape the graph onnxruntime optimizes (so also the
# session cache's key, `cache_settings`); the thread pool does not.
OPTIMIZATION = {"graph_optimization_level": "ORT_ENABLE_ALL", "use_device_allocator_for_initializers": "1"}


def row_ops_library(path: str | os.PathLike[str] | None) -> Path | None:
    """The `row_ops=` argument checked: None, or the path of an existing file (the operator
    library; whether onnxruntime can load it is known when the first session registers it)."""
    if path is None:
        return None
    if isinstance(path, bool) or not isinstance(path, (str, os.PathLike)):
        kind = type(path).__name__
        raise InputError(f"row_ops must be a path to libinbedder_row_ops.so or None, got {kind}")
    lib = Path(path)
    if not lib.is_file():
        raise InputError(f"row_ops: {lib} is not a file (the operator library libinbedder_row_ops.so)")
    return lib.resolve()


def session_options(threads: int | ThreadOptions | None, row_ops: Path | None = None) -> ort.SessionOptions:
    """The options of every session; with `row_ops` (libinbedder_row_ops.so), inbedder's row
    operators registered."""
    opts = ort.SessionOptions()
    if row_ops is not None:
        try:
            opts.register_custom_ops_library(str(row_ops))
        except Exception as e:  # onnxruntime's own kinds: a missing file, not a library, ...
            why = f"row_ops: {row_ops} is not an operator library onnxruntime can load ({_cause(e)})"
            raise InputError(why) from None
    level = OPTIMIZATION["graph_optimization_level"]
    opts.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level)
    # Weights go straight to the device allocator rather than through the arena: lower resident
    # memory and faster session creation.
    opts.add_session_config_entry(
        "session.use_device_allocator_for_initializers", OPTIMIZATION["use_device_allocator_for_initializers"]
    )
    thread_options(threads).apply(opts)
    return opts


def cache_settings(cpu_disabled_optimizers: Sequence[str]) -> dict[str, Any]:
    """What, besides its files, a graph's session-cache entry is keyed on: `OPTIMIZATION` and the
    optimizers its CPU sessions disable (native: session.cpp's cache_settings, the same JSON)."""
    return {**OPTIMIZATION, "cpu_disabled_optimizers": sorted(cpu_disabled_optimizers)}


def make_session(
    path: str | os.PathLike[str],
    device: str,
    threads: int | ThreadOptions | None = None,
    cpu_disabled_optimizers: Sequence[str] = (),
    cache: CacheSlot | None = None,
    row_ops: Path | None = None,
) -> ort.InferenceSession:
    """One inference session on the resolved device ("cpu" or "cuda"); on the CPU without the
    session optimizers the bundle's manifest names for this graph, its thread pool as `threads`
    says (an int: that many intra-op threads, the other `ThreadOptions` defaults). On the CPU with
    a `cache` slot: opened from the slot's entry when it is usable, else from `path`, saving the
    entry on the way (runtime/session_cache.py). `row_ops`: the operator library `path` (a
    row-ops graph) needs."""
    providers = [_CUDA, _CPU] if device == "cuda" else [_CPU]
    disabled = list(cpu_disabled_optimizers) if device == "cpu" else []
    staging = None
    if device == "cpu" and cache is not None:
        cached = cache.lookup()
        if cached is not None:
            try:
                return _create(cached, session_options(threads, row_ops), providers, disabled)
            except Exception as e:  # a saved graph this onnxruntime cannot open: rebuild it
                why = _cause(e)
                log.warning("session cache %s: onnxruntime cannot open it (%s); rebuilding", cache.entry, why)
                cache.discard()
        staging = cache.staging()
    opts = session_options(threads, row_ops)
    if staging is not None and cache is not None:
        cache.save_options(opts, staging)
    try:
        session = _create(Path(path), opts, providers, disabled)
    except Exception as e:  # onnxruntime raises its own Fail / InvalidProtobuf / InvalidGraph kinds
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
        cause = _cause(e)
        if device == "cuda" and _loads_on_cpu(path):
            raise DeviceError(f"{path}: onnxruntime could not create a CUDA session ({cause})") from None
        raise BundleError(f"{path}: onnxruntime cannot load this graph ({cause})") from None
    if staging is not None and cache is not None:
        cache.commit(staging)
    if device == "cuda" and session.get_providers()[0] != _CUDA:
        # onnxruntime falls back to CPU when the CUDA libraries fail to load; we do not.
        raise DeviceError(
            f"CUDAExecutionProvider could not be initialised for {path} (session providers: "
            f"{session.get_providers()}); check the CUDA/cuDNN libraries onnxruntime-gpu needs"
        )
    return session


def _create(
    path: Path, opts: ort.SessionOptions, providers: list[str], disabled: list[str]
) -> ort.InferenceSession:
    # enable_fallback=0: no retry on other providers (and none of the "EP Error" banner that
    # onnxruntime prints to stdout before one); versions without the option ignore it.
    return ort.InferenceSession(
        str(path), sess_options=opts, providers=providers, disabled_optimizers=disabled, enable_fallback=0
    )


def _cause(e: Exception) -> str:
    lines = str(e).strip().splitlines()
    return (lines[0] if lines else type(e).__name__)[:300]


def _loads_on_cpu(path: str | os.PathLike[str]) -> bool:
    """Whether the graph loads on the CPU (tells a CUDA failure from a damaged graph)."""
    try:
        ort.InferenceSession(str(Path(path)), providers=[_CPU], enable_fallback=0)
    except Exception:
        return False
    return True
