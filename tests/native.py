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
