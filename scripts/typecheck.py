"""Type-check the package as it is installed: `inbedder` with its stages `inbedder.runtime`,
`inbedder.export`, `inbedder.quantize` (top-level folders in the repo, mapped by pyproject's
package-dir).

mypy cannot follow setuptools' editable-install mapping, and run on the folders it would name
the modules `runtime.*` and leave every `inbedder.runtime` import untyped; so this lays out the
package as installed (symlinks in a temporary directory) and runs `mypy -p inbedder` on it with
pyproject's settings (the public API modules strict).

    .venv/bin/python scripts/typecheck.py
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("runtime", "export", "quantize")


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="inbedder-typecheck-") as tmp:
        pkg = Path(tmp) / "inbedder"
        pkg.mkdir()
        for f in (ROOT / "inbedder").iterdir():
            if f.suffix in (".py", ".typed") or (f.is_dir() and (f / "__init__.py").is_file()):
                (pkg / f.name).symlink_to(f, target_is_directory=f.is_dir())
        for stage in STAGES:
            (pkg / stage).symlink_to(ROOT / stage, target_is_directory=True)
        env = {**os.environ, "MYPYPATH": tmp}
        cmd = [sys.executable, "-m", "mypy", "--config-file", str(ROOT / "pyproject.toml"), "-p", "inbedder"]
        return subprocess.run(cmd, cwd=ROOT, env=env).returncode


if __name__ == "__main__":
    sys.exit(main())
