"""The public surface: the names each package exports, the error hierarchy, the CLI's error rule,
and the family registry's one-name-per-family rule."""

from __future__ import annotations

import importlib
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import inbedder

PUBLIC = {
    "inbedder": [
        "BundleError", "DeviceError", "Embedder", "ExportValidationError", "InbedderError", "InputError",
        "InputTypeError", "Manifest", "QuantizationRefused", "__version__", "list_models", "load_manifest",
    ],
    "inbedder.runtime": ["BundleError", "Embedder", "Manifest", "cuda_available", "load_manifest"],
    "inbedder.export": [
        "EMBEDDING_ATOL", "ExportFamily", "ExportValidationError", "Recipe", "detect_recipe", "export_bundle",
        "families", "known_models", "recipes", "register",
    ],
    "inbedder.quantize": [
        "DEFAULT_MIN_COSINE", "DEFAULT_MIN_COSINES", "PRECISIONS", "GateFigures", "QuantizationRefused",
        "cpu_features", "quantize_bundle",
    ],
}  # fmt: skip
SUBPACKAGES = {"catalog", "cli", "errors", "export", "jobs", "onnxfile", "quantize", "ray", "runtime"}


@pytest.mark.parametrize("module", sorted(PUBLIC))
def test_all_is_pinned_and_resolves(module: str):
    mod = importlib.import_module(module)
    assert sorted(mod.__all__) == sorted(PUBLIC[module])
    for name in mod.__all__:
        assert hasattr(mod, name), name


def test_dir_of_the_package_has_no_leaked_imports():
    public = {n for n in dir(inbedder) if not n.startswith("_")}
    assert public - SUBPACKAGES == set(PUBLIC["inbedder"]) - {"__version__"}


def test_error_hierarchy():
    for name in ("BundleError", "DeviceError", "ExportValidationError", "InputError", "InputTypeError"):
        assert issubclass(getattr(inbedder, name), inbedder.InbedderError)
    assert issubclass(inbedder.QuantizationRefused, inbedder.InbedderError)
    assert issubclass(inbedder.InputError, ValueError) and issubclass(inbedder.InputTypeError, TypeError)
    assert issubclass(inbedder.DeviceError, RuntimeError)


def test_cli_prints_user_errors_in_one_line_and_lets_bugs_show(tmp_path: Path, monkeypatch, capsys):
    from inbedder import cli

    assert cli.main(["info", str(tmp_path / "nothing")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no such bundle directory" in err[0]

    def bug(*args, **kwargs):
        raise KeyError("a bug")

    import inbedder.runtime

    monkeypatch.setattr(inbedder.runtime, "Embedder", bug)
    with pytest.raises(KeyError, match="a bug"):  # not turned into a message: a traceback
        cli.main(["info", str(tmp_path)])


def test_every_family_is_one_name_in_two_same_named_modules():
    from inbedder.export import families, recipes
    from inbedder.runtime.pipeline import module_name, pipeline_class

    fams = families()
    assert set(fams) == {"masked-lm", "causal-lm", "instructor", "sentence-encoder"}
    for name, cls in fams.items():
        stem = module_name(name)
        assert cls.__module__ == f"inbedder.export.{stem}"
        pipe = pipeline_class(name)
        assert pipe.__module__ == f"inbedder.runtime.{stem}" and pipe.family == name
        assert cls.default_recipe in {r.name for r in cls.recipes}
    for recipe, (_, fam) in recipes().items():
        assert fam.name in fams, recipe
    # Every runtime family module has its exporter.
    runtime_dir = Path(importlib.import_module("inbedder.runtime").__file__).parent
    infrastructure = {
        "bundle",
        "cpu",
        "embedder",
        "heap",
        "hub",
        "pipeline",
        "prompt",
        "samples",
        "session",
        "session_cache",
        "stamp",
    }
    stems = {m.name for m in pkgutil.iter_modules([str(runtime_dir)])} - infrastructure
    assert stems == {module_name(n) for n in fams}


def test_unknown_family_is_a_clear_bundle_error():
    from inbedder.runtime.pipeline import pipeline_class

    with pytest.raises(inbedder.BundleError, match="bundle family 'nope' is not supported"):
        pipeline_class("nope")
    with pytest.raises(inbedder.BundleError, match="not supported"):
        pipeline_class("../etc")


def test_runtime_imports_no_torch():
    code = "import sys, inbedder; inbedder.Embedder; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_progress_bar_is_imported_only_when_shown(masked_bundle):
    # tqdm.auto is a tenth of `import inbedder`'s time: loaded only for a call that shows a bar
    code = (
        "import sys, inbedder; e = inbedder.Embedder(sys.argv[1]); "
        "e.encode(['a', 'b', 'c'], instruction='q?', batch_size=1, show_progress_bar=False); "
        "assert 'tqdm' not in sys.modules, 'tqdm imported'; "
        "v = e.encode(['a', 'b', 'c'], instruction='q?', batch_size=1, show_progress_bar=True); "
        "assert 'tqdm' in sys.modules and v.shape[0] == 3"
    )
    run = subprocess.run([sys.executable, "-c", code, str(masked_bundle)], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert "embedding: 100%" in run.stderr and "3/3" in run.stderr


def test_list_models_needs_no_export_extra_and_matches_the_families():
    code = (
        "import sys, inbedder; ms = inbedder.list_models(); "
        "assert 'torch' not in sys.modules and 'transformers' not in sys.modules; "
        "print(len(ms))"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    assert int(out) == len(inbedder.list_models()) >= 9
    from inbedder.export import known_models, recipes

    table = recipes()
    for m in inbedder.list_models():
        assert known_models()[m["id"]] == m["recipe"] and table[m["recipe"]][1].name == m["family"]
        assert m["dim"] > 0 and m["licence"]
