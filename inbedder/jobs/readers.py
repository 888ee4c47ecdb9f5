"""Readers of a batch job's input: records (text, instruction, id), streamed one at a time.

Scope: naming the input (a file, a directory, a glob, or stdin), deciding each file's format,
and reading plain lines, JSONL, CSV/TSV and Parquet without holding more than one line (or one
Parquet batch) in memory. The rules of `inbedder embed` hold for every format: lines split on
"\\n" only (one trailing "\\r" stripped), a leading UTF-8 BOM dropped, blank lines (empty, or spaces
and tabs only) skipped and counted, invalid UTF-8 and lone surrogates refused naming the file, the
line and the byte offset, and a record without an instruction refused (naming it) when the bundle
needs one and no `-i` stands in.
"""

from __future__ import annotations

import csv
import glob
import json
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from inbedder.errors import InputError, surrogate_at

FORMATS = ("auto", "lines", "jsonl", "csv", "tsv", "parquet")
_BY_SUFFIX = {
    ".jsonl": "jsonl", ".json": "jsonl", ".ndjson": "jsonl", ".txt": "lines", ".csv": "csv",
    ".tsv": "tsv", ".tab": "tsv", ".parquet": "parquet", ".pq": "parquet",
}  # fmt: skip
_BOM = b"\xef\xbb\xbf"
# A record: the text, its instruction (the record's own, else -i's, else None) and its id (None
# when the input has none).
Record = tuple[str, "str | None", Any]


@dataclass(frozen=True)
class Columns:
    """Which field or column holds what (JSONL fields, CSV header names, Parquet columns). An
    instruction or id column named explicitly must exist; the defaults are used when present."""

    text: str = "text"
    instruction: str | None = None
    id: str | None = None

    def instruction_name(self) -> str:
        return self.instruction or "instruction"

    def id_name(self) -> str:
        return self.id or "id"


@dataclass(frozen=True)
class Source:
    """One input: a file (`path`) or stdin (`path` None), in format `fmt` ("auto" only for stdin:
    decided from its first non-blank line)."""

    path: Path | None
    fmt: str

    @property
    def name(self) -> str:
        return "<stdin>" if self.path is None else str(self.path)


class Stats:
    """What reading counted: blank lines skipped, and the formats read (stdin's once sniffed)."""

    def __init__(self) -> None:
        self.blank = 0
        self.formats: set[str] = set()


def resolve_inputs(arg: str, fmt: str) -> list[Source]:
    """The sources `arg` names: "-" (stdin), a file, a directory (its files with a known
    extension, or every file with an explicit `--format`, sorted by name; hidden files and names
    starting with "_" skipped), or a glob pattern (sorted)."""
    if fmt not in FORMATS:
        raise InputError(f"--format must be one of {FORMATS}, got {fmt!r}")
    if arg == "-":
        return [Source(None, fmt)]
    path = Path(arg)
    if path.is_file():
        return [Source(path, detect_format(path) if fmt == "auto" else fmt)]
    if path.is_dir():
        files = [
            p
            for p in sorted(path.iterdir())
            if p.is_file()
            and not p.name.startswith((".", "_"))
            and (fmt != "auto" or p.suffix.lower() in _BY_SUFFIX)
        ]
        if not files:
            raise SystemExit(f"{path}: a directory with no input files (.txt, .jsonl, .csv, .tsv, .parquet)")
    elif glob.has_magic(arg):
        files = [Path(p) for p in sorted(glob.glob(arg, recursive=True)) if Path(p).is_file()]
        if not files:
            raise SystemExit(f"{arg}: the pattern matches no files")
    else:
        raise SystemExit(f"{path}: no such input file")
    return [Source(p, detect_format(p) if fmt == "auto" else fmt) for p in files]


def detect_format(path: Path) -> str:
    """`--format auto` for a file: its extension (.jsonl/.json/.ndjson, .txt, .csv, .tsv/.tab,
    .parquet/.pq), else Parquet by its magic bytes, else JSONL when the first non-blank line is a
    JSON object with a string "text", else lines."""
    by_suffix = _BY_SUFFIX.get(path.suffix.lower())
    if by_suffix:
        return by_suffix
    with path.open("rb") as f:
        if f.read(4) == b"PAR1":
            return "parquet"
        f.seek(0)
        return _sniff(f)


def _sniff(lines: Iterable[bytes | str]) -> str:
    for n, raw in enumerate(lines):
        line = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
        if n == 0:
            line = line.removeprefix("\ufeff")
        if not _blank(line):
            return "jsonl" if _is_text_record(line) else "lines"
    return "lines"


def _is_text_record(line: str) -> bool:
    if not line.lstrip().startswith("{"):
        return False
    try:
        rec = json.loads(line)
    except (json.JSONDecodeError, RecursionError):
        return False
    return isinstance(rec, dict) and isinstance(rec.get("text"), str)


def _blank(line: str) -> bool:
    """Nothing to embed: empty, or spaces and tabs only (U+2028 or a form feed is content)."""
    return not line.strip(" \t\r\n")


def _decoded(raw_lines: Iterable[bytes | str], source: str, keepends: bool = False) -> Iterator[str]:
    """Lines split on "\\n" only (binary files iterate so), decoded strictly, the BOM dropped."""
    offset = 0
    for n, raw in enumerate(raw_lines, 1):
        start = offset
        if isinstance(raw, bytes):
            offset += len(raw)
            if n == 1 and raw.startswith(_BOM):
                raw, start = raw[3:], start + 3
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise InputError(
                    f"{source}:{n}: not valid UTF-8 ({e.reason} at byte {start + e.start})"
                ) from None
        else:
            line = raw.removeprefix("\ufeff") if n == 1 else raw
        if not keepends:
            line = line.removesuffix("\n").removesuffix("\r")
        yield line


def _check(source: str, where: int | str, what: str, s: str) -> None:
    at = surrogate_at(s)
    if at is not None:
        raise InputError(
            f"{source}:{where}: {what} contains a lone surrogate U+{ord(s[at]):04X} at character {at}: "
            "not valid Unicode, such texts are rejected (nothing was embedded)"
        )


class RecordReader:
    """Records of one source, checked: `iter(reader)`. `instruction` stands in for records without
    their own; `need_instruction` refuses a record left with none."""

    def __init__(
        self,
        source: Source,
        columns: Columns,
        instruction: str | None,
        need_instruction: bool,
        stats: Stats,
        stdin: Any = None,
    ):
        self.source, self.columns, self.stats = source, columns, stats
        self.instruction, self.need = instruction, need_instruction
        self.stdin = stdin

    def __iter__(self) -> Iterator[Record]:
        src = self.source
        if src.path is None:
            stream = self.stdin if self.stdin is not None else sys.stdin
            raw: Iterable[bytes | str] = getattr(stream, "buffer", stream)
            fmt = src.fmt
            if fmt == "auto":  # peek at the first non-blank line, then read it again
                head: list[bytes | str] = []
                it = iter(raw)
                for line in it:
                    head.append(line)
                    text = line.decode("utf-8", "replace") if isinstance(line, bytes) else line
                    if not _blank(text.removeprefix("\ufeff")):
                        break
                fmt = _sniff(head) if head else "lines"
                raw = _chain(head, it)
            yield from self._read(fmt, raw)
            return
        if src.fmt == "parquet":
            self.stats.formats.add("parquet")
            yield from self._parquet(src.path)
            return
        with src.path.open("rb") as f:
            yield from self._read(src.fmt, f)

    def _read(self, fmt: str, raw: Iterable[bytes | str]) -> Iterator[Record]:
        self.stats.formats.add(fmt)
        if fmt == "lines":
            yield from self._lines(raw)
        elif fmt == "jsonl":
            yield from self._jsonl(raw)
        elif fmt in ("csv", "tsv"):
            yield from self._csv(raw, fmt)
        elif fmt == "parquet":
            raise SystemExit(f"{self.source.name}: Parquet cannot be read from stdin; name the file")
        else:  # pragma: no cover - resolve_inputs checks
            raise InputError(f"unknown format {fmt!r}")

    def _instruction(self, own: str | None, where: int | str, what: str) -> str | None:
        instr = own if own is not None else self.instruction
        if instr is None and self.need:
            raise SystemExit(
                f"{self.source.name}:{where}: the {what} has no 'instruction' and no -i was given"
            )
        return instr

    def _lines(self, raw: Iterable[bytes | str]) -> Iterator[Record]:
        name = self.source.name
        if self.need and self.instruction is None:
            raise SystemExit(f"{name}: plain lines carry no instruction: {NEEDS_INSTRUCTION}")
        for n, line in enumerate(_decoded(raw, name), 1):
            if _blank(line):
                self.stats.blank += 1
                continue
            _check(name, n, "text", line)
            yield line, self.instruction, None

    def _jsonl(self, raw: Iterable[bytes | str]) -> Iterator[Record]:
        name, cols = self.source.name, self.columns
        tcol, icol, idcol = cols.text, cols.instruction_name(), cols.id_name()
        for n, line in enumerate(_decoded(raw, name), 1):
            if _blank(line):
                self.stats.blank += 1
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise SystemExit(f"{name}:{n}: not valid JSON ({e.msg})") from None
            except RecursionError:
                raise SystemExit(f"{name}:{n}: JSON nested too deeply") from None
            if not isinstance(rec, dict) or not isinstance(rec.get(tcol), str):
                raise SystemExit(f"{name}:{n}: a JSONL record needs a string field {tcol!r}")
            own = rec.get(icol)
            if own is not None and not isinstance(own, str):
                raise SystemExit(f"{name}:{n}: {icol!r} must be a string")
            if cols.instruction is not None and icol not in rec and self.instruction is None:
                raise SystemExit(f"{name}:{n}: the record has no field {icol!r} (--instruction-column)")
            text = rec[tcol]
            _check(name, n, "text", text)
            if own is not None:
                _check(name, n, "instruction", own)
            rid = rec.get(idcol)
            if cols.id is not None and rid is None:
                raise SystemExit(f"{name}:{n}: the record has no {idcol!r} (--id-column)")
            yield text, self._instruction(own, n, "record"), rid

    def _csv(self, raw: Iterable[bytes | str], fmt: str) -> Iterator[Record]:
        name, cols = self.source.name, self.columns
        lines = _decoded(raw, name, keepends=True)
        if fmt == "tsv":  # tab-separated, no quoting: a '"' is an ordinary character
            reader = csv.reader(lines, delimiter="\t", quoting=csv.QUOTE_NONE)
        else:
            reader = csv.reader(lines)
        try:
            header = next(reader)
        except StopIteration:
            return
        except csv.Error as e:
            raise SystemExit(f"{name}:1: not valid {fmt.upper()} ({e})") from None
        index = {h: k for k, h in enumerate(header)}
        ti = _column(index, cols.text, True, name, fmt.upper())
        ii = _column(index, cols.instruction_name(), cols.instruction is not None, name, fmt.upper())
        di = _column(index, cols.id_name(), cols.id is not None, name, fmt.upper())
        while True:
            try:
                row = next(reader)
            except StopIteration:
                return
            except csv.Error as e:
                raise SystemExit(f"{name}:{reader.line_num}: not valid {fmt.upper()} ({e})") from None
            n = reader.line_num
            if not row or (len(row) == 1 and _blank(row[0]) and len(header) > 1):
                self.stats.blank += 1
                continue
            if len(row) != len(header):
                raise SystemExit(f"{name}:{n}: {len(row)} fields where the header has {len(header)}")
            text = row[ti]  # type: ignore[index]  # a required column: never None
            _check(name, n, "text", text)
            own = row[ii] if ii is not None else None
            if own is not None:
                _check(name, n, "instruction", own)
            yield text, self._instruction(own, n, "row"), (row[di] if di is not None else None)

    def _parquet(self, path: Path) -> Iterator[Record]:
        pq = require_pyarrow("reading Parquet").parquet
        import pyarrow as pa

        name, cols = str(path), self.columns
        try:
            pf = pq.ParquetFile(path)
        except (pa.ArrowException, OSError) as e:
            raise SystemExit(f"{name}: not a Parquet file pyarrow can read ({e})") from None
        names = set(pf.schema_arrow.names)
        index = {n: k for k, n in enumerate(pf.schema_arrow.names)}
        _column(index, cols.text, True, name, "Parquet")
        icol = cols.instruction_name() if _column(
            index, cols.instruction_name(), cols.instruction is not None, name, "Parquet"
        ) is not None else None  # fmt: skip
        idcol = cols.id_name() if cols.id_name() in names else None
        if cols.id is not None and idcol is None:
            raise SystemExit(f"{name}: no column {cols.id!r} (--id-column); it has {sorted(names)}")
        wanted = [c for c in (cols.text, icol, idcol) if c is not None]
        for c in (cols.text, icol):
            kind = pf.schema_arrow.field(c).type if c is not None else None
            if c is not None and not (
                pa.types.is_string(kind)
                or pa.types.is_large_string(kind)
                or (c == icol and pa.types.is_null(kind))  # no row has its own instruction
            ):
                raise SystemExit(f"{name}: column {c!r} is {pf.schema_arrow.field(c).type}, not strings")
        row = 0
        for batch in pf.iter_batches(batch_size=4096, columns=list(dict.fromkeys(wanted))):
            texts = batch.column(cols.text).to_pylist()
            instrs = batch.column(icol).to_pylist() if icol else [None] * len(texts)
            ids = batch.column(idcol).to_pylist() if idcol else [None] * len(texts)
            for k, (t, own, rid) in enumerate(zip(texts, instrs, ids, strict=True)):
                where = f"row {row + k}"
                if t is None:
                    raise SystemExit(f"{name}: {where}: the text is null")
                yield t, self._instruction(own, where, "row"), rid
            row += len(texts)


NEEDS_INSTRUCTION = "-i/--instruction is required for this bundle, or an 'instruction' field in every record"


def _column(index: dict[str, int], col: str, required: bool, name: str, fmt: str) -> int | None:
    if col in index:
        return index[col]
    if required:
        raise SystemExit(f"{name}: no column {col!r} in the {fmt} header (it has {sorted(index)})")
    return None


def _chain(head: list[bytes | str], rest: Iterator[bytes | str]) -> Iterator[bytes | str]:
    yield from head
    yield from rest


def require_pyarrow(what: str) -> Any:
    """pyarrow (with pyarrow.parquet), or one line naming the extra to install."""
    try:
        import pyarrow
        import pyarrow.parquet
    except ImportError:
        raise SystemExit(
            f"{what} needs pyarrow (the parquet extra): pip install 'inbedder[parquet]'"
        ) from None
    return pyarrow


def records(
    sources: list[Source],
    columns: Columns,
    instruction: str | None,
    need_instruction: bool,
    stats: Stats,
    stdin: Any = None,
) -> Iterator[Record]:
    """Every source's records, one after the other."""
    for src in sources:
        yield from RecordReader(src, columns, instruction, need_instruction, stats, stdin)
