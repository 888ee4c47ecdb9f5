"""Builds the native tree (top-level CMakeLists.txt) once per test session, for the tests that
drive the native tools and libraries from pytest.

`INBEDDER_NATIVE_BUILD=DIR` reuses (and incrementally rebuilds) a build directory; otherwise one
directory per configuration under `build/pytest-*` in the repository. `sanitize=True` builds with
AddressSanitizer + UndefinedBehaviorSanitizer (`-DINBEDDER_SANITIZE=ON`).
"""

from __future__ import annotations

import os
import subprocess
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


@cache
def build_native(sanitize: bool = False) -> Path:
    """Configure and build the native tree; return the build directory."""
    default = ROOT / "build" / ("pytest-asan" if sanitize else "pytest")
    env_dir = os.environ.get("INBEDDER_NATIVE_BUILD" + ("_ASAN" if sanitize else ""))
    build = Path(env_dir) if env_dir else default
    build.mkdir(parents=True, exist_ok=True)
    config = [
        "cmake", "-S", str(ROOT), "-B", str(build),
        "-DCMAKE_BUILD_TYPE=" + ("Debug" if sanitize else "Release"),
        "-DINBEDDER_SANITIZE=" + ("ON" if sanitize else "OFF"),
    ]  # fmt: skip
    _run(config)
    _run(["cmake", "--build", str(build), "-j", str(os.cpu_count() or 2)])
    return build


def _run(cmd: list[str]) -> None:
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:  # show the compiler's or CMake's own words, not just the exit code
        raise RuntimeError(
            f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
        )


class CApi:
    """libinbedder's C API through ctypes, for parity tests that compare a C call with the Python
    runtime in one process (status, message and buffers as the C caller sees them)."""

    def __init__(self, build: Path):
        import ctypes

        self.ct = ctypes
        lib = ctypes.CDLL(str(build / "native" / "runtime" / "libinbedder.so"))
        c = ctypes
        lib.inbedder_last_error.restype = c.c_char_p
        lib.inbedder_status_name.restype = c.c_char_p
        lib.inbedder_model_open.argtypes = [c.c_char_p, c.c_void_p, c.POINTER(c.c_void_p)]
        lib.inbedder_model_close.argtypes = [c.c_void_p]
        lib.inbedder_model_dim.argtypes = [c.c_void_p, c.POINTER(c.c_size_t)]
        lib.inbedder_options_create.argtypes = [c.POINTER(c.c_void_p)]
        lib.inbedder_options_destroy.argtypes = [c.c_void_p]
        lib.inbedder_options_set_string.argtypes = [c.c_void_p, c.c_char_p, c.c_char_p]
        lib.inbedder_options_set_int.argtypes = [c.c_void_p, c.c_char_p, c.c_long]
        lib.inbedder_encode.argtypes = [
            c.c_void_p, c.POINTER(c.c_char_p), c.POINTER(c.c_size_t), c.c_size_t,
            c.POINTER(c.c_char_p), c.c_size_t, c.c_void_p, c.POINTER(c.c_void_p),
        ]  # fmt: skip
        lib.inbedder_result_free.argtypes = [c.c_void_p]
        lib.inbedder_result_embeddings.argtypes = [
            c.c_void_p, c.POINTER(c.POINTER(c.c_float)), c.POINTER(c.c_size_t), c.POINTER(c.c_size_t)
        ]  # fmt: skip
        lib.inbedder_result_output_shape.argtypes = [
            c.c_void_p, c.POINTER(c.c_char_p), c.POINTER(c.c_size_t), c.POINTER(c.c_size_t),
            c.POINTER(c.c_size_t),
        ]  # fmt: skip
        lib.inbedder_result_copy_output.argtypes = [c.c_void_p, c.c_void_p, c.c_size_t, c.POINTER(c.c_size_t)]
        self.lib = lib

    def status_name(self, status: int) -> str:
        return self.lib.inbedder_status_name(status).decode()

    def error(self) -> str:
        return self.lib.inbedder_last_error().decode("utf-8")

    def open(self, bundle: Path, **options: int | str) -> int:
        """A model handle (the caller closes it); open options by name, as `options` takes them."""
        m = self.ct.c_void_p()
        opts = self.options(**options) if options else None
        s = self.lib.inbedder_model_open(str(bundle).encode(), opts, self.ct.byref(m))
        if opts:
            self.lib.inbedder_options_destroy(opts)
        if s != 0:
            raise RuntimeError(f"{self.status_name(s)}: {self.error()}")
        return m.value

    def close(self, model: int) -> None:
        self.lib.inbedder_model_close(model)

    def options(self, **values: int | str) -> int:
        o = self.ct.c_void_p()
        assert self.lib.inbedder_options_create(self.ct.byref(o)) == 0
        for k, v in values.items():
            set_ = (
                self.lib.inbedder_options_set_string
                if isinstance(v, str)
                else self.lib.inbedder_options_set_int
            )
            s = set_(o, k.encode(), v.encode() if isinstance(v, str) else v)
            if s != 0:
                raise RuntimeError(f"{self.status_name(s)}: {self.error()}")
        return o.value

    def encode(self, model: int, texts: list[str], instructions: list[str] | None, **options: int | str):
        """(status name, message, result handle or None): the caller frees the result."""
        c = self.ct
        raw = [t.encode("utf-8") for t in texts]
        arr = (c.c_char_p * len(raw))(*raw)
        lens = (c.c_size_t * len(raw))(*map(len, raw))
        ins = None
        n_ins = 0
        if instructions is not None:
            ins = (c.c_char_p * len(instructions))(*[i.encode("utf-8") for i in instructions])
            n_ins = len(instructions)
        opts = self.options(**options) if options else None
        r = c.c_void_p()
        s = self.lib.inbedder_encode(model, arr, lens, len(raw), ins, n_ins, opts, c.byref(r))
        msg = self.error()
        if opts:
            self.lib.inbedder_options_destroy(opts)
        return self.status_name(s), msg, r.value

    def embeddings(self, result: int):
        import numpy as np

        c = self.ct
        data, n, dim = c.POINTER(c.c_float)(), c.c_size_t(), c.c_size_t()
        assert self.lib.inbedder_result_embeddings(result, c.byref(data), c.byref(n), c.byref(dim)) == 0
        return np.ctypeslib.as_array(data, shape=(n.value, dim.value)).copy()

    def output(self, result: int):
        """(precision, (n, cols) array of the precision's numpy dtype) from the result's output."""
        import numpy as np

        c = self.ct
        name, n, cols, size, need = c.c_char_p(), c.c_size_t(), c.c_size_t(), c.c_size_t(), c.c_size_t()
        refs = (c.byref(name), c.byref(n), c.byref(cols), c.byref(size))
        assert self.lib.inbedder_result_output_shape(result, *refs) == 0
        dtype = {"float32": np.float32, "float16": np.float16, "int8": np.int8, "binary": np.int8}.get(
            name.value.decode(), np.uint8
        )
        assert np.dtype(dtype).itemsize == size.value
        buf = (c.c_ubyte * (n.value * cols.value * size.value))()
        small = self.lib.inbedder_result_copy_output(result, buf, len(buf) - 1, c.byref(need))
        assert self.status_name(small) == "INBEDDER_ERR_BUFFER_TOO_SMALL" and need.value == len(buf)
        assert self.lib.inbedder_result_copy_output(result, buf, len(buf), None) == 0
        return name.value.decode(), np.frombuffer(bytes(buf), dtype=dtype).reshape(n.value, cols.value)

    def free(self, result: int | None) -> None:
        if result:
            self.lib.inbedder_result_free(result)
