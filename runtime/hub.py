"""Bundles by name: fetch a bundle published on the Hugging Face Hub, or publish one.

Scope: `resolve_bundle` turns what a user passes to `Embedder` (a bundle directory, or a hub name
`org/name`) into a local directory: a name is fetched with huggingface_hub into its standard cache
(`HF_HUB_CACHE`, `HF_ENDPOINT`, `HF_HUB_OFFLINE` and tokens work as for every Hugging Face
library): `inbedder.json` first, then exactly the files that manifest lists, all from the commit
the manifest came from; the cached snapshot directory is returned and `load_manifest` checks the
size and sha256 of every file as for any bundle. Offline (or with the Hub unreachable) the cached
snapshot is used. `push_bundle` checks a bundle, writes a model card (`README.md`) from its
manifest and the catalog, and uploads the bundle in one commit.

huggingface_hub is imported only when a name is resolved or a bundle pushed (the `hub` extra).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from inbedder.errors import BundleError, InbedderError, InputError

from .bundle import MANIFEST_NAME, Manifest, load_manifest

CARD_NAME = "README.md"
_NAME_PART = r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9_])?"
_HUB_NAME = re.compile(rf"{_NAME_PART}/{_NAME_PART}")
_INSTALL = "pip install 'inbedder[hub]'"


def is_hub_name(name: object) -> bool:
    """True for a str of the form `org/name` as the Hub spells repository ids."""
    if not isinstance(name, str) or _HUB_NAME.fullmatch(name) is None:
        return False
    return ".." not in name and "--" not in name


def _hub() -> Any:
    try:
        import huggingface_hub
    except ImportError as e:
        raise InbedderError(f"bundles by name need huggingface_hub: {_INSTALL} ({e})") from e
    return huggingface_hub


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


def resolve_bundle(
    name_or_path: str | os.PathLike[str],
    revision: str | None = None,
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    token: str | bool | None = None,
) -> Path:
    """A local bundle directory for `name_or_path`.

    An existing directory is returned as is. A str of the form `org/name` that is not a directory
    is a bundle on the Hub: its manifest and every file the manifest lists (nothing else) are
    fetched into the Hugging Face cache (`cache_dir`, default `HF_HUB_CACHE`) at `revision`
    (branch, tag or commit; default "main"), and the snapshot directory is returned. Files already
    in the cache are not fetched again; offline (`HF_HUB_OFFLINE=1`, or the Hub unreachable) the
    cached snapshot is used. Checksums are checked by `load_manifest`, as for any bundle.
    Anything else raises BundleError ("no such bundle directory").
    """
    path = Path(name_or_path)
    if path.is_dir():
        if revision is not None:
            raise InputError(f"{path} is a local directory; revision= applies to hub names only")
        return path
    if not is_hub_name(name_or_path):
        raise BundleError(f"{path}: no such bundle directory")
    return _fetch(str(name_or_path), revision, cache_dir, token)


def _fetch(
    repo_id: str, revision: str | None, cache_dir: str | os.PathLike[str] | None, token: str | bool | None
) -> Path:
    hub = _hub()
    from huggingface_hub.utils import (
        EntryNotFoundError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    where = f"{repo_id}: no such bundle directory, and on the Hub"
    at = f" at revision {revision!r}" if revision else ""

    def download(filename: str, rev: str | None) -> Path:
        try:
            got = hub.hf_hub_download(repo_id, filename, revision=rev, cache_dir=cache_dir, token=token)
            return Path(got)
        except LocalEntryNotFoundError as e:  # before EntryNotFoundError: a subclass of it
            raise BundleError(
                f"{where}: {filename} is not in the local cache and the Hub cannot be reached "
                f"(offline, HF_HUB_OFFLINE=1, or no connection): {_one_line(e)}"
            ) from None
        except RepositoryNotFoundError:
            raise BundleError(
                f"{where}: no repository {repo_id} (or it is private or gated: log in with "
                "`hf auth login` or set HF_TOKEN)"
            ) from None
        except RevisionNotFoundError:
            raise BundleError(f"{where}: repository {repo_id} has no revision {rev!r}") from None
        except EntryNotFoundError:
            if filename == MANIFEST_NAME:
                raise BundleError(
                    f"{where}: repository {repo_id}{at} has no {MANIFEST_NAME}; it is not an inbedder bundle"
                ) from None
            raise BundleError(
                f"{where}: {filename}, listed in the manifest of {repo_id}{at}, is missing from the "
                "repository"
            ) from None
        except HfHubHTTPError as e:
            raise BundleError(f"{where}: fetching {filename} failed: {_one_line(e)}") from None

    manifest_path = download(MANIFEST_NAME, revision)
    snapshot = manifest_path.parent  # .../snapshots/<commit>/
    try:
        raw = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BundleError(f"{manifest_path}: unreadable manifest ({e})") from e
    if not isinstance(raw, dict):
        raise BundleError(f"{manifest_path}: manifest is not a JSON object")
    manifest = Manifest.from_json(raw, origin=f"{repo_id}/{MANIFEST_NAME}")
    for filename in manifest.files:
        if "/" in filename or "\\" in filename or filename in ("", ".", "..") or filename == MANIFEST_NAME:
            raise BundleError(f"{repo_id}/{MANIFEST_NAME}: file name {filename!r} is not a bundle file name")
        # Pinned to the manifest's commit: a push in between cannot mix two versions.
        download(filename, snapshot.name)
    return snapshot


def _catalog_entry(source_model: object) -> Any:
    from inbedder.catalog import KNOWN_MODELS

    return next((m for m in KNOWN_MODELS if m.id == source_model), None)


def _yaml_str(s: str) -> str:
    return json.dumps(s, ensure_ascii=False)  # a JSON string is a valid YAML scalar


def _fmt(v: object) -> str:
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v)


_EXAMPLE_INSTRUCTION = {
    "masked-lm": "What is the emotion expressed here?",
    "causal-lm": "What is the emotion expressed here?",
    "instructor": "Represent the sentence for retrieval: ",
    "sentence-encoder": "",
}


def model_card(manifest: Manifest, repo_id: str) -> str:
    """The model card (`README.md`) published with a bundle: YAML metadata (library_name,
    licence, tags, base model), the recipe and source, the fidelity figures the exporter or
    quantizer recorded, usage, and the files with their checksums."""
    src: Mapping[str, Any] = manifest.source
    source_model = src.get("model")
    known = _catalog_entry(source_model)
    licence_text = known.licence if known else "unknown"
    match = re.match(r"[a-z0-9][a-z0-9.\-]*", licence_text)
    licence_id = match.group() if match else "unknown"
    tags = ["inbedder", "onnx", "sentence-embeddings", "instruction-following", manifest.recipe]
    if manifest.precision != "fp32":
        tags.append(manifest.precision)
    front = [
        "---",
        "library_name: inbedder",
        f"license: {_yaml_str(licence_id)}",
        "pipeline_tag: feature-extraction",
        "tags:",
        *(f"- {_yaml_str(t)}" for t in tags),
    ]
    # Only a source the Hub knows: a catalog id, or one the exporter resolved to a commit.
    if isinstance(source_model, str) and is_hub_name(source_model) and (known or src.get("revision")):
        front.append(f"base_model: {_yaml_str(source_model)}")
    front.append("---")

    def row(k: str, v: object) -> str:
        return f"| {k} | {'unknown' if v is None else f'`{v}`'} |"

    body = [
        f"# {repo_id}",
        "",
        f"An inbedder bundle: the `{manifest.recipe}` recipe of the "
        f"`{manifest.family}` family, exported to ONNX from `{source_model}` and run with onnxruntime, "
        "tokenizers and numpy (no torch).",
        "",
        "| | |",
        "| --- | --- |",
        row("recipe", manifest.recipe),
        row("family", manifest.family),
        row("source checkpoint", source_model),
        row("source revision", src.get("revision")),
        row("architecture", src.get("architecture")),
        row("precision", manifest.precision),
        row("embedding dim", manifest.embedding_dim),
        row("max length (tokens)", manifest.truncation.max_length),
        row("post-processing", ", ".join(manifest.postprocess) or "none"),
        "",
        "## Licence",
        "",
        f"`{licence_text}`"
        + (
            ""
            if known and known.licence_checked
            else " (not checked against the source's model card: check it before you use this bundle)"
        ),
        "",
        "## Fidelity",
        "",
    ]
    v = dict(manifest.validation)
    if v:
        against = v.pop("against", None)
        if against:
            body += [f"Measured against: {against}.", ""]
        body += ["| figure | value |", "| --- | --- |"]
        body += [f"| {k} | {_fmt(x)} |" for k, x in v.items() if not isinstance(x, (dict, list))]
    else:
        body.append("No fidelity figures were recorded in the manifest.")
    instruction = _EXAMPLE_INSTRUCTION.get(manifest.family, "")
    body += [
        "",
        "## Usage",
        "",
        "```bash",
        "pip install 'inbedder[hub]'",
        f"inbedder embed -m {repo_id} -i {json.dumps(instruction)} texts.txt -o emb.npy",
        "```",
        "",
        "```python",
        "from inbedder import Embedder",
        "",
        f'emb = Embedder("{repo_id}")  # fetched into the Hugging Face cache, every file checked',
        f'vecs = emb.encode(["I love cats!", "The flight was late."], instruction={json.dumps(instruction)})',
        "```",
        "",
        "## Files",
        "",
        f"Every file is listed in `{MANIFEST_NAME}` with its size and sha256; inbedder checks them all "
        "when it loads the bundle.",
        "",
        "| file | bytes | sha256 |",
        "| --- | ---: | --- |",
        *(f"| {n} | {r.get('bytes')} | `{r.get('sha256')}` |" for n, r in manifest.files.items()),
        "",
    ]
    return "\n".join([*front, "", *body])


def push_bundle(
    bundle_dir: str | os.PathLike[str],
    repo_id: str,
    *,
    private: bool = False,
    token: str | None = None,
    revision: str | None = None,
) -> str:
    """Publish a bundle as the Hub repository `repo_id` (created if needed) in one commit: the
    manifest, every file it lists, and a generated model card. Returns the commit URL.

    The bundle is checked first (every checksum). `revision` names a branch (created from the
    default branch if missing); default "main".
    """
    if not is_hub_name(repo_id):
        raise InputError(f"repo_id must be of the form org/name, got {repo_id!r}")
    root = Path(bundle_dir)
    manifest = load_manifest(root, verify=True)
    if CARD_NAME in manifest.files:
        raise InputError(f"{root}: the bundle lists a {CARD_NAME}; the model card would replace it")
    hub = _hub()
    from huggingface_hub.utils import HfHubHTTPError

    card = model_card(manifest, repo_id).encode("utf-8")
    ops = [
        hub.CommitOperationAdd(path_in_repo=name, path_or_fileobj=str(root / name))
        for name in (MANIFEST_NAME, *manifest.files)
    ]
    ops.append(hub.CommitOperationAdd(path_in_repo=CARD_NAME, path_or_fileobj=card))
    api = hub.HfApi(token=token)
    try:
        api.create_repo(repo_id, private=private, exist_ok=True)
        if revision is not None and revision != "main":
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        info = api.create_commit(
            repo_id,
            ops,
            commit_message=f"inbedder bundle: {manifest.recipe}, {manifest.precision}, "
            f"dim {manifest.embedding_dim}, from {manifest.source.get('model')}",
            revision=revision,
        )
    except HfHubHTTPError as e:
        raise InbedderError(f"push of {root} to {repo_id} failed: {_one_line(e)}") from None
    return str(info.commit_url)
