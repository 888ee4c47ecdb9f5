"""The `inbedder` command line: export, quantize, embed, info, models, push.

Scope: argument parsing and file formats only; every command calls the same functions a Python user
calls. `embed` is a batch job (`inbedder.jobs`: streaming, resumable, `--workers`; `--ray` for
Ray Data, `inbedder.ray`): the flags become a `JobSpec` here and the summary is printed here.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from inbedder.errors import InbedderError
from inbedder.runtime.bundle import Manifest


def _read_texts(path: Path) -> tuple[list[str], list[str | None] | None]:
    """Texts and per-text instructions (None if no record has one) of a file of any input format."""
    from inbedder.jobs.readers import Columns, RecordReader, Stats, resolve_inputs

    recs = [
        r
        for src in resolve_inputs(str(path), "auto")
        for r in RecordReader(src, Columns(), None, False, Stats())
    ]
    instructions = [r[1] for r in recs]
    return [r[0] for r in recs], (None if all(i is None for i in instructions) else instructions)


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
        # kept_fp32 (int8) or kept_int8 (int4): the precision the fallback keeps MatMuls at
        kept = next(k for k in a if k.startswith("kept_") and not k.endswith("_nodes"))
        weights = (
            f"{'per-channel' if a['per_channel'] else 'per-tensor'} weights"
            if "per_channel" in a
            else f"{m.precision} weights (block {q.get('block_size')})"
        )
        if a.get("u8_weights"):  # full range as uint8, where 7-bit weights were chosen
            weights += ", int8 weights stored as uint8"
        accepted = (
            f"\naccepted attempt {a['attempt'] + 1} of {len(q['attempts'])}: "
            f"{weights}, {a[kept]} MatMuls kept {kept.removeprefix('kept_')}"
        )
    rows = ""
    if "row_ops" in q:
        done = q["row_ops"]["graphs"]
        rows = "\nrow-ops graphs: " + (
            ", ".join(
                f"{g['file']} ({role}; {g['ops']['RowQuantize']} RowQuantize, {g['ops']['RowScale']} "
                f"RowScale, {g['ops'].get('attention', 0)} writing attention's Q, K, V; bit-identical "
                f"on {g['bit_identical_passes']} passes)"
                for role, g in done.items()
            )
            or "none (no per-token row quantization to fuse)"
        )
    asked = "".join(
        f"\nanswers on request: {g['nodes']} nodes of {role} behind {q['on_request']['input']} "
        f"(bit-identical on {g['bit_identical_passes']} passes)"
        for role, g in q.get("on_request", {}).get("graphs", {}).items()
    )
    print(
        f"wrote {out}: {m.precision} bundle; fidelity vs fp32 (bound {v['bound']} on held-out min):\n"
        f"  {part('held-out', v['heldout'])}\n  {part('calibration', v['calibration'])}{rr}{accepted}"
        f"{asked}{rows}"
    )


def _read_pairs(file: str | None, instruction: str, what: str) -> list[tuple[str, str]] | None:
    """(text, instruction) pairs from a texts file (one per line, or JSONL text/instruction)."""
    if file is None:
        return None
    path = Path(file)
    if not path.is_file():
        raise SystemExit(f"{path}: no such {what} file")
    texts, per_text = _read_texts(path)
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
        int8_method=args.int8_method,
        row_ops=args.row_ops,
        answers_on_request=args.answers_on_request,
    )
    _print_gate(args.out_dir, m)
    return 0


def _cmd_embed(args: argparse.Namespace) -> int:
    from inbedder.jobs import JobSpec, run_job
    from inbedder.jobs.readers import Columns

    options = {}
    if args.decode_steps is not None:
        options["decode_steps"] = args.decode_steps
    if args.max_new_tokens is not None:
        options["max_new_tokens"] = args.max_new_tokens
    spec = JobSpec(
        model=args.model,
        input=args.input,
        output=args.output,
        answers=args.answers,
        fmt=args.format,
        columns=Columns(args.text_column, args.instruction_column, args.id_column),
        instruction=args.instruction,
        batch_size=args.batch_size,
        chunk_size=args.chunk_size,
        normalize=args.normalize,
        truncation=args.truncation,
        dtype=args.dtype,
        device=args.device,
        threads=args.threads,
        verify=args.verify,
        spinning=args.spinning,
        session_cache=args.session_cache,
        row_ops=args.row_ops,
        workers=args.workers,
        options=options,
        overwrite=args.overwrite,
        resume=args.resume,
        progress=args.progress,
        quiet=args.quiet,
        command=("inbedder", *args.argv),
    )
    if args.ray is not None:
        from inbedder.ray import run_cli_job

        return run_cli_job(spec, None if args.ray == "local" else args.ray)
    r = run_job(spec)
    if r.stopped is not None:
        return 128 + r.stopped  # 130 after SIGINT, 143 after SIGTERM
    if not args.quiet:
        what = f"{r.sources[0]} read as {r.formats[0]}" if len(r.sources) == 1 else (
            f"{len(r.sources)} files read as {', '.join(r.formats)}"
        )  # fmt: skip
        blank = f", {r.blank} blank line(s) skipped" if r.blank else ""
        rate = r.embedded / r.seconds if r.seconds > 0 else 0.0
        print(
            f"wrote {r.output}: {r.rows} x {r.dim} {args.dtype} ({what}{blank}); {r.embedded} texts in "
            f"{r.seconds:.1f} s ({rate:.0f} texts/s), {r.truncated} truncated",
            file=sys.stderr,
        )
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    from inbedder.runtime import Embedder

    # The checks `Embedder` runs (manifest fields, files, the family's, tokenizer and graphs).
    m = Embedder(args.bundle, verify="none" if args.no_verify else args.verify).manifest
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


_VERIFY_HELP = (
    "checksums: stamp (default: hash the files the bundle's verified-stamp does not show unchanged), "
    "full (hash every file), none (sizes only)"
)


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
        "--precision", choices=("fp32", "int8", "int4", "fp16"), default="fp32", help="quantize after export"
    )
    e.add_argument("-v", "--verbose", action="store_true", help="show transformers' loading reports")
    e.set_defaults(func=_cmd_export)

    q = sub.add_parser("quantize", help="fp32 bundle -> int8 / int4 (CPU), fp16 (CUDA) bundle, behind a gate")
    q.add_argument("bundle", help="an fp32 bundle")
    q.add_argument("out_dir", help="the bundle directory to write")
    q.add_argument(
        "--precision",
        choices=("int8", "int4", "fp16"),
        default="int8",
        help="int8 (CPU, default), int4 (CPU, weight-only: the smallest bundle) or fp16 (CUDA)",
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
    q.add_argument(
        "--min-cosine",
        type=float,
        default=None,
        # the gate's DEFAULT_MIN_COSINES (not imported: the CLI loads without the quantize extra)
        help="refuse when the held-out min cosine is below this (default: int8 0.99, fp16 0.99, int4 0.93)",
    )
    q.add_argument(
        "--reduce-range",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="weights safe on every x86 CPU: 7-bit, or 8-bit stored as uint8 if 7 bits miss the bound "
        "(default: on for x86 CPUs without VNNI)",
    )
    q.add_argument("--per-channel", action="store_true", help="per-channel weight scales (dynamic int8)")
    q.add_argument(
        "--int8-method",
        choices=("per-token", "dynamic"),
        default="per-token",
        help="per-token activation scales (default: results independent of the batch) or "
        "onnxruntime's quantize_dynamic (one scale per batch)",
    )
    q.add_argument(
        "--row-ops",
        metavar="LIB",
        help="also write each graph's row-ops form (fused per-token passes, bit-identical), checked "
        "with this operator library (libinbedder_row_ops.so, built with the native runtime)",
    )
    q.add_argument(
        "--answers-on-request",
        action="store_true",
        help="put the nodes only answers need (a masked LM's head) behind the graph input "
        "want_answers, checked bit-identical: calls without answers skip them (faster; ~50 MB more "
        "peak memory while a roberta-large session opens)",
    )
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
    m.add_argument(
        "input",
        nargs="?",
        default="-",
        help="a file (lines, JSONL, CSV, TSV, Parquet), a directory or glob of such files, or - for stdin",
    )
    m.add_argument(
        "-o",
        "--output",
        required=True,
        help="output .npy (the suffix is added if missing) or .parquet; with --ray a Parquet directory",
    )
    m.add_argument("--answers", default=None, metavar="JSONL", help="also write the answers here")
    m.add_argument(
        "--format",
        choices=("auto", "lines", "jsonl", "csv", "tsv", "parquet"),
        default="auto",
        help="auto (default): by extension (.jsonl/.json, .txt, .csv, .tsv, .parquet), else Parquet by "
        "its magic bytes, else JSONL when the first line is a JSON object with a 'text', else lines",
    )
    m.add_argument("--text-column", default="text", help="JSONL field / CSV, Parquet column (default text)")
    m.add_argument(
        "--instruction-column",
        default=None,
        help="per-record instructions (default: 'instruction' when there is one)",
    )
    m.add_argument("--id-column", default=None, help="record ids (default: 'id' when there is one)")
    m.add_argument(
        "--dtype",
        choices=("float32", "float16"),
        default="float32",
        help="vectors written as (default float32)",
    )
    m.add_argument(
        "--chunk-size",
        type=int,
        default=1024,
        help="texts read, embedded and written at a time (default 1024); a stop waits for one chunk",
    )
    m.add_argument(
        "--workers",
        type=int,
        default=1,
        help="processes on this machine (default 1), --threads each (default: the cores split); "
        "with --ray the actors",
    )
    m.add_argument("--resume", action="store_true", help="continue a stopped run from its progress record")
    m.add_argument(
        "--ray",
        nargs="?",
        const="local",
        default=None,
        metavar="ADDRESS",
        help="run on Ray Data (a cluster's ADDRESS, else RAY_ADDRESS or a local one): Parquet in and out",
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
    m.add_argument(
        "--threads",
        type=int,
        default=None,
        help="onnxruntime threads per worker (default: the cores this process may use / workers)",
    )
    m.add_argument(
        "--spinning",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="idle onnxruntime threads busy-wait (default off: kinder to a shared CPU)",
    )
    m.add_argument(
        "--session-cache",
        default=None,
        metavar="DIR",
        help="keep each graph optimized and pre-packed for this machine in DIR: faster later opens (CPU)",
    )
    m.add_argument(
        "--row-ops",
        default=None,
        metavar="LIB",
        help="run a graph's row-ops form (same vectors, faster) with this operator library "
        "(libinbedder_row_ops.so) when the bundle has one (CPU)",
    )
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
    m.add_argument("--verify", choices=("stamp", "full", "none"), default="stamp", help=_VERIFY_HELP)
    m.add_argument("--overwrite", action="store_true", help="replace existing output files")
    m.add_argument("-q", "--quiet", action="store_true", help="no progress bar or summary")
    m.set_defaults(func=_cmd_embed)

    ls = sub.add_parser("models", help="the checkpoints inbedder knows: recipe, dimension, licence")
    ls.add_argument("--json", action="store_true", help="as JSON")
    ls.set_defaults(func=_cmd_models)

    i = sub.add_parser("info", help="print a bundle's manifest after checking it")
    i.add_argument("bundle", help="bundle directory, or a hub name org/name")
    i.add_argument("--verify", choices=("stamp", "full", "none"), default="stamp", help=_VERIFY_HELP)
    i.add_argument("--no-verify", action="store_true", help="the same as --verify none")
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
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv
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
    except KeyboardInterrupt as e:
        # An embed job keeps its done chunks (it said where); its code says which signal (143:
        # SIGTERM). Other commands: nothing was changed, 130.
        kept, signum = getattr(e, "kept", 0), getattr(e, "signum", None)
        print(
            f"inbedder {args.command}: interrupted{'' if kept else '; nothing was changed'}", file=sys.stderr
        )
        return 128 + signum if signum is not None else 130
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
