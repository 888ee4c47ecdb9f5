"""Bundles by name against a fake Hub on 127.0.0.1: push with a model card, fetch into the cache
with every checksum checked, offline from the cache, corrupted and missing repositories, the CLI.

The fake Hub (a thread, a random free port) serves the routes huggingface_hub uses here:
HEAD/GET /{repo}/resolve/{revision}/{file} (X-Repo-Commit, ETag, Content-Length; X-Error-Code on
404), POST /api/repos/create, /api/validate-yaml, /api/models/{repo}/preupload/{rev} (every file
"regular": no LFS or Xet transfer), /api/models/{repo}/commit/{rev} (NDJSON, base64 files) and
/api/models/{repo}/branch/{branch}. huggingface_hub reads HF_ENDPOINT etc. into its constants at
import, so those constants are patched; nothing goes beyond 127.0.0.1.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import numpy as np
import pytest

pytest.importorskip("huggingface_hub")
from huggingface_hub import constants as hf_constants

from inbedder import BundleError, Embedder, InbedderError
from inbedder.cli import main
from inbedder.runtime.bundle import MANIFEST_NAME, load_manifest
from inbedder.runtime.hub import is_hub_name, push_bundle, resolve_bundle

TOKEN = "hf_fake_test_token"
TEXTS = ["I love cats!", "The flight was late.", "Paris, in May."]


class FakeHub:
    """Repositories in memory: branches -> commit sha, commit sha -> {path: bytes}."""

    def __init__(self) -> None:
        self.repos: dict[str, dict[str, Any]] = {}
        self.log: list[tuple[str, str]] = []
        self.auth: list[str | None] = []
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.server.daemon_threads = True
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05})
        self.thread.daemon = True
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)

    def commit(self, repo_id: str, branch: str, files: dict[str, bytes], message: str = "") -> str:
        repo = self.repos[repo_id]
        parent = repo["branches"].get(branch)
        tree = {**(repo["commits"][parent] if parent else {}), **files}
        sha = hashlib.sha1(f"{repo_id}:{parent}:{message}:{sorted(tree)}".encode()).hexdigest()
        sha = hashlib.sha1((sha + "".join(hashlib.sha256(b).hexdigest() for b in tree.values())).encode())
        oid = sha.hexdigest()
        repo["commits"][oid] = tree
        repo["branches"][branch] = oid
        return oid

    def files(self, repo_id: str, revision: str = "main") -> dict[str, bytes]:
        repo = self.repos[repo_id]
        return repo["commits"][repo["branches"].get(revision, revision)]

    def create(self, repo_id: str, private: bool = False) -> None:
        self.repos[repo_id] = {"branches": {}, "commits": {}, "private": private}
        self.commit(repo_id, "main", {".gitattributes": b""}, "initial commit")


def _handler(hub: FakeHub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        timeout = 30  # a stuck client cannot hold a thread for ever
        # HTTP/1.0: one request per connection, so a stopped server answers nothing more.

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _send(self, code: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
            self.send_response(code)
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _json(self, code: int, obj: Any, headers: dict[str, str] | None = None) -> None:
            self._send(
                code, json.dumps(obj).encode(), {"Content-Type": "application/json", **(headers or {})}
            )

        def _error(self, code: int, error_code: str, headers: dict[str, str] | None = None) -> None:
            self._json(code, {"error": error_code}, {"X-Error-Code": error_code, **(headers or {})})

        def _body(self) -> bytes:
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))

        def do_HEAD(self) -> None:
            self._resolve()

        def do_GET(self) -> None:
            self._resolve()

        def _resolve(self) -> None:
            path = unquote(urlsplit(self.path).path)
            with hub.lock:
                hub.log.append((self.command, path))
            parts = path.lstrip("/").split("/")
            if len(parts) < 5 or parts[2] != "resolve":
                return self._error(404, "NotFound")
            repo_id, revision, filename = "/".join(parts[:2]), parts[3], "/".join(parts[4:])
            with hub.lock:
                repo = hub.repos.get(repo_id)
                if repo is None:
                    return self._error(401, "RepoNotFound")
                commit = repo["branches"].get(revision, revision)
                if commit not in repo["commits"]:
                    return self._error(404, "RevisionNotFound")
                data = repo["commits"][commit].get(filename)
            if data is None:
                return self._error(404, "EntryNotFound", {"X-Repo-Commit": commit})
            etag = hashlib.sha256(data).hexdigest()
            self._send(200, data, {"X-Repo-Commit": commit, "ETag": f'"{etag}"'})

        def do_POST(self) -> None:
            path = unquote(urlsplit(self.path).path)
            body = self._body()
            with hub.lock:
                hub.log.append(("POST", path))
                hub.auth.append(self.headers.get("Authorization"))
            if path == "/api/repos/create":
                req = json.loads(body)
                repo_id = f"{req['organization']}/{req['name']}"
                with hub.lock:
                    if repo_id in hub.repos:
                        # the Hub answers 409 with the url too
                        url = f"{hub.endpoint}/{repo_id}"
                        return self._json(409, {"error": "You already created this model repo", "url": url})
                    hub.create(repo_id, private=req.get("visibility") == "private")
                return self._json(200, {"url": f"{hub.endpoint}/{repo_id}", "name": repo_id})
            if path == "/api/validate-yaml":
                return self._json(200, {"errors": [], "warnings": []})
            parts = path.lstrip("/").split("/")
            if len(parts) < 6 or parts[:2] != ["api", "models"]:
                return self._error(404, "NotFound")
            repo_id, action, rev = "/".join(parts[2:4]), parts[4], "/".join(parts[5:])
            with hub.lock:
                if repo_id not in hub.repos:
                    return self._error(404, "RepoNotFound")
                if action == "preupload":
                    files = json.loads(body)["files"]
                    modes = [
                        {"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files
                    ]
                    return self._json(200, {"files": modes})
                if action == "branch":
                    repo = hub.repos[repo_id]
                    if rev in repo["branches"]:
                        return self._json(409, {"error": "Reference already exists"})
                    repo["branches"][rev] = repo["branches"]["main"]
                    return self._json(200, {})
                if action == "commit":
                    lines = [json.loads(line) for line in body.splitlines() if line.strip()]
                    header = lines[0]["value"]
                    files: dict[str, bytes] = {}
                    for item in lines[1:]:
                        if item["key"] != "file" or item["value"].get("encoding") != "base64":
                            return self._json(400, {"error": f"unsupported commit item {item['key']}"})
                        files[item["value"]["path"]] = base64.b64decode(item["value"]["content"])
                    if rev not in hub.repos[repo_id]["branches"]:
                        return self._error(404, "RevisionNotFound")
                    oid = hub.commit(repo_id, rev, files, header["summary"])
                    url = f"{hub.endpoint}/{repo_id}/commit/{oid}"
                    return self._json(200, {"commitUrl": url, "commitOid": oid, "success": True})
            return self._error(404, "NotFound")

    return Handler


def _point_at(mp: pytest.MonkeyPatch, endpoint: str) -> None:
    mp.setattr(hf_constants, "ENDPOINT", endpoint)
    mp.setattr(
        hf_constants, "HUGGINGFACE_CO_URL_TEMPLATE", endpoint + "/{repo_id}/resolve/{revision}/{filename}"
    )


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeHub]:
    fake = FakeHub()
    with pytest.MonkeyPatch.context() as mp:
        _point_at(mp, fake.endpoint)
        mp.setattr(hf_constants, "HF_HUB_OFFLINE", False)  # conftest sets HF_HUB_OFFLINE=1
        mp.setattr(hf_constants, "HF_HUB_DISABLE_XET", True)
        mp.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path_factory.mktemp("hf-cache")))
        mp.setattr(hf_constants, "HF_TOKEN_PATH", str(tmp_path_factory.mktemp("hf-home") / "token"))
        mp.setenv("HF_TOKEN", TOKEN)  # never a token file of this machine
        mp.setenv("NO_PROXY", "127.0.0.1,localhost")
        mp.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
        try:
            yield fake
        finally:
            fake.stop()


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, hub: FakeHub) -> Path:
    """A fresh, empty Hugging Face cache for one test."""
    path = tmp_path / "hf-cache"
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(path))
    return path


@pytest.fixture(scope="module")
def pushed(hub: FakeHub, masked_bundle: Path) -> tuple[str, str]:
    """`masked_bundle` published as org/tiny: (repo id, commit url)."""
    return "org/tiny", push_bundle(masked_bundle, "org/tiny", token=TOKEN)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_push_uploads_the_bundle_and_a_model_card(hub: FakeHub, pushed: tuple[str, str], masked_bundle: Path):
    repo_id, url = pushed
    files = hub.files(repo_id)
    assert url.startswith(f"{hub.endpoint}/{repo_id}/commit/") and url.endswith(
        hub.repos[repo_id]["branches"]["main"]
    )
    manifest = load_manifest(masked_bundle)
    assert set(files) == {".gitattributes", "README.md", MANIFEST_NAME, *manifest.files}
    for name in (MANIFEST_NAME, *manifest.files):
        assert files[name] == (masked_bundle / name).read_bytes(), name
    assert TOKEN in (hub.auth[-1] or "")
    card = files["README.md"].decode()
    front, body = card.split("\n---\n", 1)
    assert front.startswith("---\nlibrary_name: inbedder\n") and 'license: "unknown"' in front
    assert '- "inbedder"' in front and '- "masked-answer"' in front and "base_model" not in front
    assert "`masked-answer`" in body and "`masked-lm`" in body
    assert str(manifest.source["model"]) in body  # the source checkpoint
    assert f"| max_abs_diff | {manifest.validation['max_abs_diff']:.6g} |" in body  # fidelity figures
    assert f'Embedder("{repo_id}")' in body and "inbedder[hub]" in body
    for name, rec in manifest.files.items():
        assert f"| {name} | {rec['bytes']} | `{rec['sha256']}` |" in body


def test_model_card_of_a_known_checkpoint(masked_bundle: Path):
    import dataclasses

    from inbedder.runtime.hub import model_card

    m = load_manifest(masked_bundle)
    known = dataclasses.replace(m, source={**m.source, "model": "BrandonZYW/roberta-large-InBedder"})
    card = model_card(known, "org/rl")
    assert 'license: "mit"' in card and 'base_model: "BrandonZYW/roberta-large-InBedder"' in card
    assert "`mit (base model roberta-large)` (not checked" in card
    instructor = dataclasses.replace(m, source={**m.source, "model": "hkunlp/instructor-base"})
    card = model_card(instructor, "org/ib")
    assert 'license: "apache-2.0"' in card and "not checked" not in card


def test_embedder_by_name_fetches_listed_files_into_the_cache(
    hub: FakeHub, pushed: tuple[str, str], masked_bundle: Path, cache: Path
):
    repo_id, _ = pushed
    hub.log.clear()
    emb = Embedder(repo_id)
    assert (
        emb.bundle_dir.is_relative_to(cache) and emb.bundle_dir.name == hub.repos[repo_id]["branches"]["main"]
    )
    local = Embedder(masked_bundle)
    np.testing.assert_array_equal(emb.encode(TEXTS, "What animal?"), local.encode(TEXTS, "What animal?"))
    fetched = {p.rsplit("/", 1)[-1] for _, p in hub.log}
    assert fetched == {MANIFEST_NAME, *local.manifest.files}  # never README.md or .gitattributes
    # Cached: a second load asks only for the manifest's metadata.
    hub.log.clear()
    Embedder(repo_id)
    assert hub.log == [("HEAD", f"/{repo_id}/resolve/main/{MANIFEST_NAME}")]


def test_works_offline_and_with_the_hub_down_from_the_cache(
    hub: FakeHub, pushed: tuple[str, str], masked_bundle: Path, cache: Path, monkeypatch: pytest.MonkeyPatch
):
    repo_id, _ = pushed
    want = Embedder(masked_bundle).encode(TEXTS, "Where?")
    first = Embedder(repo_id).bundle_dir
    _point_at(monkeypatch, f"http://127.0.0.1:{_free_port()}")  # nothing listens there
    emb = Embedder(repo_id)
    assert emb.bundle_dir == first
    np.testing.assert_array_equal(emb.encode(TEXTS, "Where?"), want)
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    np.testing.assert_array_equal(Embedder(repo_id).encode(TEXTS, "Where?"), want)
    with pytest.raises(BundleError, match=r"not in the local cache and the Hub cannot be reached"):
        Embedder("org/never-fetched")


@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_a_file_corrupted_on_the_hub_is_refused(hub: FakeHub, masked_bundle: Path, cache: Path, damage: str):
    repo_id = f"org/corrupt-{damage}"
    push_bundle(masked_bundle, repo_id, token=TOKEN)
    manifest = load_manifest(masked_bundle)
    name = max(manifest.files, key=lambda n: manifest.files[n]["bytes"])  # the weights
    files = hub.files(repo_id)
    data = files[name]
    files[name] = data[:100] + bytes([data[100] ^ 0xFF]) + data[101:] if damage == "flip" else data[:-7]
    what = "sha256 differs" if damage == "flip" else "differs from the manifest"
    with pytest.raises(BundleError, match=rf"{name}: .*{what}"):
        Embedder(repo_id)


def test_missing_names_and_non_bundles_are_clear_errors(hub: FakeHub, pushed: tuple[str, str], cache: Path):
    with pytest.raises(BundleError, match=r"org/nothing-here: no such bundle directory, .*no repository"):
        Embedder("org/nothing-here")
    hub.create("org/plain")
    hub.commit("org/plain", "main", {"README.md": b"# not a bundle\n"})
    with pytest.raises(BundleError, match=r"has no inbedder\.json; it is not an inbedder bundle"):
        Embedder("org/plain")
    with pytest.raises(BundleError, match=r"has no revision 'v9'"):
        resolve_bundle(pushed[0], revision="v9")
    for not_a_name in ("a/b/c", "org/", "../x", "org/na--me", "nothing"):
        assert not is_hub_name(not_a_name)
        with pytest.raises(BundleError, match="no such bundle directory"):
            Embedder(not_a_name)


def test_push_to_a_branch_and_resolve_a_revision(
    hub: FakeHub, pushed: tuple[str, str], masked_bundle: Path, cache: Path
):
    repo_id, _ = pushed
    url = push_bundle(masked_bundle, repo_id, token=TOKEN, revision="v1")
    commit = hub.repos[repo_id]["branches"]["v1"]
    assert url.endswith(commit)
    assert resolve_bundle(repo_id, revision="v1").name == commit
    assert resolve_bundle(repo_id, revision=commit).name == commit


def test_cli_push_embed_info_by_name(
    hub: FakeHub, masked_bundle: Path, cache: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    assert main(["push", str(masked_bundle), "org/cli", "--private"]) == 0
    out = capsys.readouterr().out.strip()
    assert out == f"{hub.endpoint}/org/cli/commit/{hub.repos['org/cli']['branches']['main']}"
    assert hub.repos["org/cli"]["private"]
    src = tmp_path / "in.txt"
    src.write_text("\n".join(TEXTS) + "\n", encoding="utf-8")
    npy = tmp_path / "emb.npy"
    assert main(["embed", "-m", "org/cli", "-i", "What animal?", str(src), "-o", str(npy), "-q"]) == 0
    np.testing.assert_array_equal(np.load(npy), Embedder(masked_bundle).encode(TEXTS, "What animal?"))
    capsys.readouterr()
    assert main(["info", "org/cli"]) == 0
    assert json.loads(capsys.readouterr().out)["recipe"] == "masked-answer"
    assert main(["info", "org/missing-repo"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no repository org/missing-repo" in err[0]


def test_console_script_by_name_with_hf_endpoint(
    hub: FakeHub, pushed: tuple[str, str], masked_bundle: Path, tmp_path: Path
):
    """The user's path: a fresh interpreter configured by HF_ENDPOINT / HF_HUB_CACHE only."""
    env = {
        **os.environ,
        "HF_ENDPOINT": hub.endpoint,
        "HF_HUB_CACHE": str(tmp_path / "cache"),
        "HF_HUB_OFFLINE": "0",
        "HF_HUB_DISABLE_XET": "1",
        "HF_TOKEN": TOKEN,
        "NO_PROXY": "127.0.0.1,localhost",
    }
    src, npy = tmp_path / "in.txt", tmp_path / "emb.npy"
    src.write_text("\n".join(TEXTS) + "\n", encoding="utf-8")
    cmd = [
        sys.executable,
        "-m",
        "inbedder.cli",
        "embed",
        "-m",
        pushed[0],
        "-i",
        "Who?",
        str(src),
        "-o",
        str(npy),
    ]
    r = subprocess.run([*cmd, "-q"], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    np.testing.assert_array_equal(np.load(npy), Embedder(masked_bundle).encode(TEXTS, "Who?"))
    assert any((tmp_path / "cache").glob("models--org--tiny/snapshots/*/model.onnx"))


def test_without_huggingface_hub_the_error_names_the_extra(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # import fails
    with pytest.raises(InbedderError, match=r"pip install 'inbedder\[hub\]'"):
        resolve_bundle("org/anything")
    with pytest.raises(BundleError, match="no such bundle directory"):
        resolve_bundle(str(tmp_path / "missing"))
