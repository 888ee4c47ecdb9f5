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
            text = data.decode("utf-8-sig")  # a leading UTF-8 BOM is not part of the first text
        except UnicodeDecodeError as e:
            line = data.count(b"\n", 0, e.start) + 1
            raise InputError(f"{source}:{line}: not valid UTF-8 ({e.reason} at byte {e.start})") from None
    else:
        text = data.removeprefix("\ufeff")
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # the final line end
    return [ln[:-1] if ln.endswith("\r") else ln for ln in lines]


def _read_texts(
    stream: TextIO | BinaryIO, fmt: str, source: str
) -> tuple[list[str], list[str | None] | None]:
    texts, instructions, _, _ = _read_records(stream, fmt, source)
    return texts, instructions


def _read_records(
    stream: TextIO | BinaryIO, fmt: str, source: str
) -> tuple[list[str], list[str | None] | None, list[int], tuple[str, int]]:
    """Texts, per-text instructions (or None), the line number of each text, and (the format
    read, the number of lines)."""
    lines = _split_lines(stream.read(), source)
    if fmt == "auto":
        fmt = _detect_format(lines, source)
    if fmt == "lines":
        # Blank lines (empty, or spaces and tabs only) are skipped, as in JSONL; the summary counts them.
        numbered = [(n, ln) for n, ln in enumerate(lines, 1) if not _blank(ln)]
        return [ln for _, ln in numbered], None, [n for n, _ in numbered], (fmt, len(lines))
    texts: list[str] = []
    instructions: list[str | None] = []
    numbers: list[int] = []
    for n, line in enumerate(lines, 1):
        if _blank(line):
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
        return texts, None, numbers, (fmt, len(lines))
    return texts, instructions, numbers, (fmt, len(lines))  # None where a record has no instruction


def _blank(line: str) -> bool:
    """A line with nothing to embed: empty, or spaces and tabs only (any other character, U+2028
    or a form feed among them, is content)."""
    return not line.strip(" \t")


def _detect_format(lines: Sequence[str], source: str) -> str:
    """`--format auto`: by the file's extension (.jsonl / .json: JSONL; .txt: lines), else JSONL
    when the first non-blank line is a JSON object with a string "text", else lines."""
    suffix = Path(source).suffix.lower()
    if suffix in (".jsonl", ".json", ".ndjson"):
        return "jsonl"
    if suffix == ".txt" or (source == "<stdin>" and not lines):
        return "lines"
    first = next((ln for ln in lines if ln.strip()), "")
    if first.lstrip().startswith("{"):
        try:
            rec = json.loads(first)
        except (json.JSONDecodeError, RecursionError):
            return "lines"
        if isinstance(rec, dict) and isinstance(rec.get("text"), str):
            return "jsonl"
    return "lines"


def _check_unicode(
    texts: Sequence[str], instructions: Sequence[str | None] | None, numbers: Sequence[int], source: str
) -> None:
    """Texts with a lone surrogate (possible through a JSON escape) are rejected, naming the line."""
    for k, t in enumerate(texts):
        for what, s in (("text", t), ("instruction", (instructions[k] if instructions else "") or "")):
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


def _extra(module: str, extra: str, command: str) -> None:
    """A command whose extra is not installed: one line naming the fix."""
    import importlib

    try:
        importlib.import_module(module)
    except ImportError as e:
        missing = getattr(e, "name", None) or str(e)
        fix = f"pip install 'inbedder[{extra}]'"
        raise SystemExit(
            f"inbedder {command}: needs the {extra} extra ({missing} is missing): {fix}"
        ) from None


def _cmd_export(args: argparse.Namespace) -> int:
    _extra("inbedder.export", "export", "export")
    if not args.verbose:  # transformers' load reports and progress bars: only with -v
        import transformers

        transformers.logging.set_verbosity_error()
        transformers.logging.disable_progress_bar()
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
    initialised = m.source.get("initialised_weights") or []
    if initialised:
        print(
            f"note: {args.model} has no weights for {len(initialised)} tensors of the "
            f"{m.source.get('architecture')} (e.g. {initialised[0]}); they were initialised from a fixed "
            "seed, so answers are noise; the embedding (the encoder's states) is the checkpoint's own",
            file=sys.stderr,
        )
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

    def part(name: str, p: dict) -> str:
        ans = "" if p.get("answers_agree") is None else f", answers agree {p['answers_agree']}/{p['texts']}"
        return (
            f"{name} ({p['source']}, {p['texts']} texts): min cosine {p['min_cosine']:.5f}, "
            f"p1 {p['p1_cosine']:.5f}, mean {p['mean_cosine']:.5f}{ans}"
        )

    rr = "" if "reduce_range" not in q else f"; reduce_range={q['reduce_range']} ({q.get('cpu')})"
    accepted = ""
    if "accepted_attempt" in q:
        a = q["attempts"][q["accepted_attempt"]]
        accepted = (
            f"\naccepted attempt {a['attempt'] + 1} of {len(q['attempts'])}: "
            f"{'per-channel' if a['per_channel'] else 'per-tensor'} weights, "
            f"{a['kept_fp32']} MatMuls kept fp32"
        )
    print(
        f"wrote {out}: {m.precision} bundle; fidelity vs fp32 (bound {v['bound']} on held-out min):\n"
        f"  {part('held-out', v['heldout'])}\n  {part('calibration', v['calibration'])}{rr}{accepted}"
    )


def _read_pairs(file: str | None, instruction: str, what: str) -> list[tuple[str, str]] | None:
    """(text, instruction) pairs from a texts file (one per line, or JSONL text/instruction)."""
    if file is None:
        return None
    path = Path(file)
    if not path.is_file():
        raise SystemExit(f"{path}: no such {what} file")
    with path.open("rb") as fb:
        texts, per_text = _read_texts(fb, "auto", str(path))
    if not texts:
        raise SystemExit(f"{path}: the {what} file has no texts")
    instr = per_text or [instruction] * len(texts)
    return [(t, i or instruction) for t, i in zip(texts, instr, strict=True)]


def _cmd_quantize(args: argparse.Namespace) -> int:
    _extra("inbedder.quantize", "quantize", "quantize")
    from inbedder.quantize import quantize_bundle

    m = quantize_bundle(
        args.bundle,
        args.out_dir,
        precision=args.precision,
        calibration=_read_pairs(args.calibration, args.instruction, "calibration"),
        heldout=_read_pairs(args.heldout, args.instruction, "held-out"),
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
        stdin = getattr(sys.stdin, "buffer", sys.stdin)
        texts, per_text, numbers, (fmt, nlines) = _read_records(stdin, args.format, source)
    else:
        path = Path(args.input)
        if not path.is_file():
            raise SystemExit(f"{path}: no such input file")
        source = str(path)
        with path.open("rb") as fb:
            texts, per_text, numbers, (fmt, nlines) = _read_records(fb, args.format, source)
    _check_unicode(texts, per_text, numbers, source)
    given = args.instruction  # a record's own instruction wins, -i stands in for the others
    instruction: str | list[str] = given or ""
    if per_text is not None:
        instruction = [i or given or "" for i in per_text]
    out = _npy_path(args.output)
    paths = [out] if args.answers is None else [out, Path(args.answers)]
    for path in paths:
        if path.is_dir():
            raise SystemExit(f"{path} is a directory; name the output file")
        if path.exists() and not args.overwrite:
            raise SystemExit(f"{path} exists; pass --overwrite to replace it")
    # Every output location is checked (its temporary file created) before the bundle is loaded.
    outputs = _Outputs(paths)
    try:
        emb = Embedder(args.model, device=args.device, threads=args.threads)
        if args.instruction is None and emb.pipeline.needs_instruction:
            # The API's rule: an instruction must be given (-i, or one per JSONL record); -i "" is one.
            if per_text is None:
                raise SystemExit(
                    f"-i/--instruction is required for this bundle ({emb.manifest.recipe}), or an "
                    "'instruction' field in every JSONL record"
                )
            lacking = [numbers[k] for k, i in enumerate(per_text) if i is None]
            if lacking:
                raise SystemExit(
                    f"{source}:{lacking[0]}: the record has no 'instruction' and no -i was given"
                )
        show = False if args.quiet else args.progress
        options = {}
        if args.decode_steps is not None:
            options["decode_steps"] = args.decode_steps
        if args.max_new_tokens is not None:
            options["max_new_tokens"] = args.max_new_tokens
        for name in set(options) - set(emb.pipeline.options):
            accepted = ", ".join(_flag(o) for o in sorted(emb.pipeline.options)) or "none"
            family = emb.manifest.family
            raise SystemExit(
                f"{_flag(name)} does not apply to this bundle ({family}; its options: {accepted})"
            )
        try:
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
        except InbedderError as e:  # the library's argument names, as the flags the user typed
            message = str(e)
            for name in (*options, "batch_size"):
                message = message.replace(name, _flag(name))
            raise type(e)(message) from None
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
        blank = nlines - len(texts)
        print(
            f"wrote {out}: {vecs.shape[0]} x {vecs.shape[1]} float32 ({source} read as {fmt}"
            f"{f', {blank} blank line(s) skipped' if blank else ''})",
            file=sys.stderr,
        )
    return 0


def _flag(option: str) -> str:
    return "--" + option.replace("_", "-")


def _npy_path(name: str) -> Path:
    """The file `np.save` writes: `.npy` is appended when the name has no such suffix."""
    path = Path(name)
    return path if path.suffix == ".npy" else path.with_name(path.name + ".npy")


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
    p.add_argument("--version", action="version", version=f"inbedder {_version()}")
    sub = p.add_subparsers(dest="command", required=True)

    e = sub.add_parser("export", help="checkpoint (hub id or directory) -> validated bundle")
    e.add_argument("model", help="hub id (e.g. BrandonZYW/roberta-large-InBedder) or local directory")
    e.add_argument("out_dir", help="the bundle directory to write")
    e.add_argument(
        "--recipe",
        help="masked-answer | masked-answer-pair | causal-answer | causal-answer-avg | instructor | "
        "sentence-embedding (default: from the hub id or the checkpoint's layout)",
    )
    e.add_argument(
        "--max-length",
        type=int,
        default=None,
        help="token limit of a prompt (default: the model's, at most 512)",
    )
    e.add_argument("--revision", default=None, help="hub revision (branch, tag or commit)")
    e.add_argument("--opset", type=int, default=17, help="ONNX opset (default 17)")
    e.add_argument(
        "--decode-steps", type=int, default=None, help="masked LMs: default passes of iterative unmasking"
    )
    e.add_argument("--overwrite", action="store_true", help="replace an existing bundle at out_dir")
    e.add_argument(
        "--precision", choices=("fp32", "int8", "fp16"), default="fp32", help="quantize after export"
    )
    e.add_argument("-v", "--verbose", action="store_true", help="show transformers' loading reports")
    e.set_defaults(func=_cmd_export)

    q = sub.add_parser("quantize", help="fp32 bundle -> int8 (CPU) / fp16 (CUDA) bundle, behind a gate")
    q.add_argument("bundle", help="an fp32 bundle")
    q.add_argument("out_dir", help="the bundle directory to write")
    q.add_argument(
        "--precision", choices=("int8", "fp16"), default="int8", help="int8 (CPU, default) or fp16 (CUDA)"
    )
    q.add_argument(
        "--calibration",
        metavar="FILE",
        help="texts that choose the settings: one per line, or JSONL text/instruction (default: built-in)",
    )
    q.add_argument(
        "--heldout",
        metavar="FILE",
        help="texts the bound is checked on, never used to choose (same format; default: built-in)",
    )
    q.add_argument(
        "-i", "--instruction", default="What is this text about?", help="for texts of those files without one"
    )
    q.add_argument("--min-cosine", type=float, default=0.99, help="refuse below this (default 0.99)")
    q.add_argument(
        "--reduce-range",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="7-bit weights (default: on for x86 CPUs without VNNI)",
    )
    q.add_argument("--per-channel", action="store_true", help="per-channel weight scales")
    q.add_argument("--overwrite", action="store_true", help="replace an existing bundle at out_dir")
    q.set_defaults(func=_cmd_quantize)

    m = sub.add_parser("embed", help="embed texts from a file or stdin with a bundle")
    m.add_argument("-m", "--model", required=True, help="bundle directory, or a hub name org/name")
    m.add_argument(
        "-i",
        "--instruction",
        default=None,
        help="the instruction for every text (a JSONL record's own 'instruction' wins); for "
        "sentence-embedding bundles an optional query prefix",
    )
    m.add_argument("input", nargs="?", default="-", help="text file (one per line, or JSONL) or - for stdin")
    m.add_argument("-o", "--output", required=True, help="output .npy (the suffix is added if missing)")
    m.add_argument("--answers", default=None, metavar="JSONL", help="also write the answers here")
    m.add_argument(
        "--format",
        choices=("auto", "lines", "jsonl"),
        default="auto",
        help="auto (default): by extension (.jsonl/.json: JSONL, .txt: lines), else JSONL when the "
        "first line is a JSON object with a 'text'",
    )
    m.add_argument("--batch-size", type=int, default=32, help="texts per graph call (default 32)")
    m.add_argument("--normalize", action="store_true", help="L2-normalise the vectors")
    m.add_argument(
        "--truncation",
        choices=("input", "reference"),
        default="input",
        help="input (default): cut the end of a long text; reference: the published tokenizer rule",
    )
    m.add_argument("--device", choices=("cpu", "cuda", "auto"), default="cpu", help="default cpu")
    m.add_argument("--threads", type=int, default=None, help="onnxruntime threads (default: all cores)")
    m.add_argument(
        "--decode-steps", type=int, default=None, help="masked LMs: passes of iterative unmasking (default 1)"
    )
    m.add_argument(
        "--max-new-tokens", type=int, default=None, help="causal LMs: answer length (default: the bundle's)"
    )
    m.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="the progress bar (default: on a terminal)",
    )
    m.add_argument("--overwrite", action="store_true", help="replace existing output files")
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


def _version() -> str:
    from inbedder import __version__

    return __version__


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
