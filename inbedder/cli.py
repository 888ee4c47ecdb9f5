"""The `inbedder` command line: export, quantize, embed, info, models, push.

Scope: argument parsing and file formats only; every command calls the same functions a Python user
calls. `embed` reads one text per line, or JSONL with a "text" field (and optional
"instruction"), from a file or stdin, and writes a float32 .npy (and answers as JSONL).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import BinaryIO, TextIO

import numpy as np

from inbedder.errors import InbedderError, InputError, surrogate_at
from inbedder.runtime.bundle import Manifest


def _split_lines(data: bytes | str, source: str) -> list[str]:
    """Lines split on "\\n" only (one trailing "\\r" stripped); every other separator (U+2028,
    U+0085, form feed, a lone "\\r") stays inside its line. Invalid UTF-8 names its line."""
    if isinstance(data, bytes):
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as e:
            line = data.count(b"\n", 0, e.start) + 1
            raise InputError(f"{source}:{line}: not valid UTF-8 ({e.reason} at byte {e.start})") from None
    else:
        text = data
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # the final line end
    return [ln[:-1] if ln.endswith("\r") else ln for ln in lines]


def _read_texts(stream: TextIO | BinaryIO, fmt: str, source: str) -> tuple[list[str], list[str] | None]:
    texts, instructions, _ = _read_records(stream, fmt, source)
    return texts, instructions


def _read_records(
    stream: TextIO | BinaryIO, fmt: str, source: str
) -> tuple[list[str], list[str] | None, list[int]]:
    """Texts, per-text instructions (or None) and the line number of each text."""
    lines = _split_lines(stream.read(), source)
    if fmt == "auto":
        first = next((ln for ln in lines if ln.strip()), "")
        fmt = "jsonl" if first.lstrip().startswith("{") else "lines"
    if fmt == "lines":
        return lines, None, list(range(1, len(lines) + 1))
    texts: list[str] = []
    instructions: list[str | None] = []
    numbers: list[int] = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise SystemExit(f"{source}:{n}: not valid JSON ({e.msg})") from None
        except RecursionError:
            raise SystemExit(f"{source}:{n}: JSON nested too deeply") from None
        if not isinstance(rec, dict) or not isinstance(rec.get("text"), str):
            raise SystemExit(f"{source}:{n}: a JSONL record needs a string field 'text'")
        instr = rec.get("instruction")
        if instr is not None and not isinstance(instr, str):
            raise SystemExit(f"{source}:{n}: 'instruction' must be a string")
        texts.append(rec["text"])
        instructions.append(instr)
        numbers.append(n)
    if all(i is None for i in instructions):
        return texts, None, numbers
    return texts, [i if i is not None else "" for i in instructions], numbers


def _check_unicode(
    texts: Sequence[str], instructions: Sequence[str] | None, numbers: Sequence[int], source: str
) -> None:
    """Texts with a lone surrogate (possible through a JSON escape) are rejected, naming the line."""
    for k, t in enumerate(texts):
        for what, s in (("text", t), ("instruction", instructions[k] if instructions else "")):
            where = surrogate_at(s)
            if where is not None:
                raise InputError(
                    f"{source}:{numbers[k]}: {what} contains a lone surrogate U+{ord(s[where]):04X} at "
                    f"character {where}: not valid Unicode, such texts are rejected (nothing was embedded)"
                )


def _json_line(obj: object) -> str:
    """One JSON line that every reader splits back the same: the separators JSON leaves raw
    (U+2028, U+2029, U+0085) are escaped."""
    s = json.dumps(obj, ensure_ascii=False)
    return s.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029").replace("\x85", "\\u0085")


class _Outputs:
    """Output files written under temporary names beside their targets and renamed into place only
    when every one is complete: a full disk or a signal never damages a previous good output.
    Creating the temporary files first checks that every location is writable."""

    def __init__(self, paths: Sequence[Path]):
        self.final = list(paths)
        self.temps: list[Path] = []
        try:
            for p in self.final:
                try:
                    p.parent.mkdir(parents=True, exist_ok=True)
                    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".partial", dir=p.parent)
                except OSError as e:
                    raise OSError(e.errno, e.strerror, str(p)) from None
                os.close(fd)
                self.temps.append(Path(tmp))
        except BaseException:
            self.abort()
            raise

    def write(self, i: int, fill: Callable[[BinaryIO], object]) -> None:
        try:
            with open(self.temps[i], "wb") as f:
                fill(f)
                f.flush()
                os.fsync(f.fileno())
        except OSError as e:
            raise OSError(e.errno, e.strerror, str(self.final[i])) from None

    def commit(self) -> None:
        for tmp, p in zip(self.temps, self.final, strict=True):
            os.replace(tmp, p)
        self.temps = []

    def abort(self) -> None:
        for tmp in self.temps:
            tmp.unlink(missing_ok=True)
        self.temps = []


def _cmd_export(args: argparse.Namespace) -> int:
    from inbedder.export import export_bundle

    m = export_bundle(
        args.model,
        args.out_dir,
        recipe=args.recipe,
        max_length=args.max_length,
        revision=args.revision,
        opset=args.opset,
        overwrite=args.overwrite,
        precision=args.precision,
        decode_steps=args.decode_steps,
    )
    if m.precision != "fp32":
        _print_gate(args.out_dir, m)
        return 0
    v = m.validation
    answers = (
        "" if v.get("answers_equal") is None else f", answers equal {v['answers_equal']}/{v.get('prompts')}"
    )
    print(
        f"wrote {args.out_dir}: recipe {m.recipe}, dim {m.embedding_dim}, max_length "
        f"{m.truncation.max_length}; validation max|diff| {v.get('max_abs_diff', float('nan')):.3g} "
        f"(tolerance {v.get('tolerance', float('nan')):.3g}){answers}"
    )
    return 0


def _print_gate(out: str, m: Manifest) -> None:
    v, q = m.validation, m.options.get("quantization", {})
    ans = "" if v.get("answers_agree") is None else f", answers agree {v['answers_agree']}/{v['texts']}"
    rr = "" if "reduce_range" not in q else f"; reduce_range={q['reduce_range']} ({q.get('cpu')})"
    print(
        f"wrote {out}: {m.precision} bundle; fidelity vs fp32: min cosine {v['min_cosine']:.5f}, "
        f"mean {v['mean_cosine']:.5f} over {v['texts']} texts{ans} (bound {v['bound']}){rr}"
    )


def _cmd_quantize(args: argparse.Namespace) -> int:
    from inbedder.quantize import quantize_bundle

    calibration = None
    if args.calibration is not None:
        path = Path(args.calibration)
        if not path.is_file():
            raise SystemExit(f"{path}: no such calibration file")
        with path.open("rb") as fb:
            texts, per_text = _read_texts(fb, "auto", str(path))
        if not texts:
            raise SystemExit(f"{path}: the calibration file has no texts")
        instr = per_text or [args.instruction] * len(texts)
        calibration = [(t, i or args.instruction) for t, i in zip(texts, instr, strict=True)]
    m = quantize_bundle(
        args.bundle,
        args.out_dir,
        precision=args.precision,
        calibration=calibration,
        min_cosine=args.min_cosine,
        reduce_range=args.reduce_range,
        per_channel=args.per_channel,
        overwrite=args.overwrite,
    )
    _print_gate(args.out_dir, m)
    return 0


def _cmd_embed(args: argparse.Namespace) -> int:
    from inbedder.runtime import Embedder

    if args.input == "-":
        source = "<stdin>"
        texts, per_text, numbers = _read_records(getattr(sys.stdin, "buffer", sys.stdin), args.format, source)
    else:
        path = Path(args.input)
        if not path.is_file():
            raise SystemExit(f"{path}: no such input file")
        source = str(path)
        with path.open("rb") as fb:
            texts, per_text, numbers = _read_records(fb, args.format, source)
    _check_unicode(texts, per_text, numbers, source)
    if per_text is not None and args.instruction is not None:
        per_text = [i or args.instruction for i in per_text]
    instruction = per_text if per_text is not None else (args.instruction or "")
    out = Path(args.output)
    # Every output location is checked (its temporary file created) before the bundle is loaded.
    outputs = _Outputs([out] if args.answers is None else [out, Path(args.answers)])
    try:
        emb = Embedder(args.model, device=args.device, threads=args.threads)
        if args.instruction is None and per_text is None and emb.pipeline.answers:
            raise SystemExit("-i/--instruction is required (or an 'instruction' field per JSONL record)")
        show = None if not args.quiet else False
        options = {}
        if args.decode_steps is not None:
            options["decode_steps"] = args.decode_steps
        if args.max_new_tokens is not None:
            options["max_new_tokens"] = args.max_new_tokens
        result = emb.encode(
            texts,
            instruction,
            batch_size=args.batch_size,
            normalize=args.normalize,
            show_progress_bar=show,
            return_answers=args.answers is not None,
            truncation=args.truncation,
            **options,
        )
        vecs, answers = result if isinstance(result, tuple) else (result, None)
        outputs.write(0, lambda f: np.save(f, vecs))
        if answers is not None:
            lines = "".join(
                _json_line({"text": t, "answer": a}) + "\n" for t, a in zip(texts, answers, strict=True)
            )
            outputs.write(1, lambda f: f.write(lines.encode("utf-8")))
        outputs.commit()
    finally:
        outputs.abort()
    if not args.quiet:
        print(f"wrote {out}: {vecs.shape[0]} x {vecs.shape[1]} float32", file=sys.stderr)
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    from inbedder.runtime import Embedder

    # The checks `Embedder` runs (manifest fields, files, the family's, tokenizer and graphs).
    m = Embedder(args.bundle, verify=not args.no_verify).manifest
    print(json.dumps(m.to_json(), indent=2, ensure_ascii=False))
    return 0


def _cmd_push(args: argparse.Namespace) -> int:
    from inbedder.runtime.hub import push_bundle

    print(push_bundle(args.bundle, args.repo_id, private=args.private, revision=args.revision))
    return 0


def _cmd_models(args: argparse.Namespace) -> int:
    from inbedder.catalog import list_models

    models = list_models()
    if args.json:
        print(json.dumps(models, indent=2))
        return 0
    for m in models:
        licence = m["licence"] + ("" if m["licence_checked"] else " [unverified]")
        print(f"{m['id']:40s} {m['recipe']:20s} {m['dim']:5d}  {licence}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="inbedder", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)

    e = sub.add_parser("export", help="checkpoint (hub id or directory) -> validated bundle")
    e.add_argument("model", help="hub id (e.g. BrandonZYW/roberta-large-InBedder) or local directory")
    e.add_argument("out_dir")
    e.add_argument("--recipe", help="masked-answer | masked-answer-pair | ... (default: detected)")
    e.add_argument("--max-length", type=int, default=None)
    e.add_argument("--revision", default=None, help="hub revision (branch, tag or commit)")
    e.add_argument("--opset", type=int, default=17)
    e.add_argument(
        "--decode-steps", type=int, default=None, help="masked LMs: default passes of iterative unmasking"
    )
    e.add_argument("--overwrite", action="store_true")
    e.add_argument(
        "--precision", choices=("fp32", "int8", "fp16"), default="fp32", help="quantize after export"
    )
    e.set_defaults(func=_cmd_export)

    q = sub.add_parser("quantize", help="fp32 bundle -> int8 (CPU) / fp16 (CUDA) bundle, behind a gate")
    q.add_argument("bundle", help="an fp32 bundle")
    q.add_argument("out_dir")
    q.add_argument("--precision", choices=("int8", "fp16"), default="int8")
    q.add_argument("--calibration", metavar="FILE", help="texts: one per line, or JSONL text/instruction")
    q.add_argument(
        "-i", "--instruction", default="What is this text about?", help="for calibration texts without one"
    )
    q.add_argument("--min-cosine", type=float, default=0.99, help="refuse below this (default 0.99)")
    q.add_argument(
        "--reduce-range",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="7-bit weights (default: on for x86 CPUs without VNNI)",
    )
    q.add_argument("--per-channel", action="store_true", help="per-channel weight scales")
    q.add_argument("--overwrite", action="store_true")
    q.set_defaults(func=_cmd_quantize)

    m = sub.add_parser("embed", help="embed texts from a file or stdin with a bundle")
    m.add_argument("-m", "--model", required=True, help="bundle directory, or a hub name org/name")
    m.add_argument("-i", "--instruction", default=None)
    m.add_argument("input", nargs="?", default="-", help="text file (one per line, or JSONL) or -")
    m.add_argument("-o", "--output", required=True, help="output .npy")
    m.add_argument("--answers", default=None, metavar="JSONL", help="also write the answers here")
    m.add_argument("--format", choices=("auto", "lines", "jsonl"), default="auto")
    m.add_argument("--batch-size", type=int, default=32)
    m.add_argument("--normalize", action="store_true", help="L2-normalise the vectors")
    m.add_argument("--truncation", choices=("input", "reference"), default="input")
    m.add_argument("--device", choices=("cpu", "cuda", "auto"), default="cpu")
    m.add_argument("--threads", type=int, default=None)
    m.add_argument(
        "--decode-steps", type=int, default=None, help="masked LMs: passes of iterative unmasking (default 1)"
    )
    m.add_argument(
        "--max-new-tokens", type=int, default=None, help="causal LMs: answer length (default: the bundle's)"
    )
    m.add_argument("-q", "--quiet", action="store_true", help="no progress bar or summary")
    m.set_defaults(func=_cmd_embed)

    ls = sub.add_parser("models", help="the checkpoints inbedder knows: recipe, dimension, licence")
    ls.add_argument("--json", action="store_true", help="as JSON")
    ls.set_defaults(func=_cmd_models)

    i = sub.add_parser("info", help="print a bundle's manifest after checking it")
    i.add_argument("bundle", help="bundle directory, or a hub name org/name")
    i.add_argument("--no-verify", action="store_true", help="skip the sha256 check")
    i.set_defaults(func=_cmd_info)

    u = sub.add_parser("push", help="publish a bundle on the Hugging Face Hub with a model card")
    u.add_argument("bundle", help="bundle directory")
    u.add_argument("repo_id", metavar="ORG/NAME")
    u.add_argument("--private", action="store_true", help="create the repository private")
    u.add_argument("--revision", default=None, help="branch to commit to (default: main)")
    u.set_defaults(func=_cmd_push)
    return p


def _terminate(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI. A user's problem (every `InbedderError`, an existing output) is one line on
    stderr and exit code 2; an operating-system error (disk full, read-only file system, no
    permission) is one line naming the file and exit code 1; Ctrl-C and SIGTERM remove temporary
    files and directories and exit 130; anything else is a bug and shows its traceback."""
    args = build_parser().parse_args(argv)
    previous = None
    with contextlib.suppress(ValueError):  # ValueError: not the main thread
        previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        return int(args.func(args))
    except (InbedderError, FileExistsError) as e:
        # ExportValidationError and QuantizationRefused carry the figures in their text.
        print(f"inbedder {args.command}: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"inbedder {args.command}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"inbedder {args.command}: interrupted; nothing was changed", file=sys.stderr)
        return 130
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
