"""Writers of a batch job's output, one chunk at a time, each resumable from a known row count.

Scope: an incremental `.npy` (float32 or float16), the answers JSONL beside it, and Parquet (id,
text, answer, vector as a fixed-size list) with one row group per chunk. Every writer writes into
its *partial* file (`NAME.partial.npy`, ...: readable at every point, with the rows done so far),
reports a `state()` after each chunk (the progress record keeps it), can `truncate` a partial
back to a state (resume after a crash between a write and its record), and `finish()`es by
renaming the partial into place.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from inbedder.errors import InputError

# The .npy header: magic, version 1.0, a little-endian uint16 length, then a Python dict literal
# padded with spaces and ended by "\n" (numpy's format). Fixed at 128 bytes so the row count can
# be rewritten in place after every chunk: the file is a valid .npy of the rows done.
_NPY_HEADER = 128
_MAGIC = b"\x93NUMPY\x01\x00"


def partial_path(final: Path) -> Path:
    """`emb.npy` -> `emb.partial.npy`: the file written until the job is complete."""
    return final.with_name(f"{final.stem}.partial{final.suffix}")


def _oserror(e: OSError, path: Path) -> OSError:
    return OSError(e.errno, e.strerror, str(path))


def npy_header(rows: int, dim: int, dtype: np.dtype[Any]) -> bytes:
    descr = np.lib.format.dtype_to_descr(dtype)
    body = f"{{'descr': {descr!r}, 'fortran_order': False, 'shape': ({rows}, {dim}), }}"
    size = _NPY_HEADER - len(_MAGIC) - 2  # the dict, its padding and the closing "\n"
    if len(body) >= size:  # pragma: no cover - 10**80 rows
        raise InputError(f"too many rows for the .npy header ({rows})")
    return _MAGIC + size.to_bytes(2, "little") + (body.ljust(size - 1) + "\n").encode("latin1")


class NpyWriter:
    """(N, dim) rows appended to a .npy; after each chunk the header says how many."""

    def __init__(self, final: Path, dim: int, dtype: str, resume: dict[str, Any] | None = None):
        self.final, self.path = final, partial_path(final)
        self.dim, self.dtype = dim, np.dtype(dtype)
        self.rows = 0
        self.f: BinaryIO
        try:
            if resume is None:
                self.f = open(self.path, "wb")  # noqa: SIM115 - kept open across chunks
                self.f.write(npy_header(0, dim, self.dtype))
            else:
                self.f = open(self.path, "r+b")  # noqa: SIM115
                self.rows = int(resume["rows"])
                self.f.truncate(_NPY_HEADER + self.rows * dim * self.dtype.itemsize)
                self.f.seek(0, os.SEEK_END)
                self._header()
        except OSError as e:
            raise _oserror(e, self.final) from None

    def write(self, vecs: np.ndarray) -> None:  # (B, dim)
        try:
            self.f.write(np.ascontiguousarray(vecs, dtype=self.dtype).tobytes())
            self.rows += len(vecs)
            self._header()
        except OSError as e:
            raise _oserror(e, self.final) from None

    def _header(self) -> None:
        self.f.flush()
        end = self.f.tell()
        self.f.seek(0)
        self.f.write(npy_header(self.rows, self.dim, self.dtype))
        self.f.seek(end)
        self.f.flush()
        os.fsync(self.f.fileno())

    def state(self) -> dict[str, Any]:
        return {"rows": self.rows}

    def close(self) -> None:
        self.f.close()

    def finish(self) -> None:
        self.close()
        os.replace(self.path, self.final)


class AnswersWriter:
    """`{"text", "answer"}` JSON lines (U+2028, U+2029 and U+0085 escaped, so every reader splits
    them back the same), appended per chunk; its state is the byte size."""

    def __init__(self, final: Path, resume: dict[str, Any] | None = None):
        self.final, self.path = final, partial_path(final)
        self.f: BinaryIO
        try:
            if resume is None:
                self.f = open(self.path, "wb")  # noqa: SIM115 - kept open across chunks
            else:
                self.f = open(self.path, "r+b")  # noqa: SIM115
                self.f.truncate(int(resume["bytes"]))
                self.f.seek(0, os.SEEK_END)
        except OSError as e:
            raise _oserror(e, self.final) from None

    def write(self, texts: list[str], answers: list[str]) -> None:
        data = "".join(
            json_line({"text": t, "answer": a}) + "\n" for t, a in zip(texts, answers, strict=True)
        )
        try:
            self.f.write(data.encode("utf-8"))
            self.f.flush()
            os.fsync(self.f.fileno())
        except OSError as e:
            raise _oserror(e, self.final) from None

    def state(self) -> dict[str, Any]:
        return {"bytes": self.f.tell()}

    def close(self) -> None:
        self.f.close()

    def finish(self) -> None:
        self.close()
        os.replace(self.path, self.final)


def json_line(obj: object) -> str:
    """One JSON line that every reader splits back the same: the separators JSON leaves raw
    (U+2028, U+2029, U+0085) are escaped."""
    s = json.dumps(obj, ensure_ascii=False)
    return s.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029").replace("\x85", "\\u0085")


class ParquetWriter:
    """Rows (id, text, [answer,] vector) as Parquet, one row group per chunk.

    A Parquet file is readable only once its footer is written, so chunks go into a working file
    (`.NAME.writing`) and the partial file is made (footer written, renamed into place) when the
    job stops; a resumed job copies the partial's row groups into a new working file first. The
    state is the rows of the last partial file written."""

    def __init__(
        self,
        final: Path,
        dim: int,
        dtype: str,
        answers: bool,
        resume: dict[str, Any] | None = None,
    ):
        from inbedder.jobs.readers import require_pyarrow

        self.pa = require_pyarrow("writing Parquet")
        self.final, self.path = final, partial_path(final)
        self.working = final.with_name(f".{final.name}.writing")
        self.dim, self.dtype, self.answers = dim, np.dtype(dtype), answers
        self.rows = 0
        self.id_type: Any = None
        self.writer: Any = None
        self.done_rows = 0  # rows in the partial file
        if resume is not None:
            self._copy_partial(int(resume["rows"]))

    def _schema(self, id_type: Any) -> Any:
        pa = self.pa
        vec = pa.float16() if self.dtype == np.float16 else pa.float32()
        fields = [pa.field("id", id_type), pa.field("text", pa.string())]
        if self.answers:
            fields.append(pa.field("answer", pa.string()))
        fields.append(pa.field("vector", pa.list_(vec, self.dim)))
        return pa.schema(fields)

    def _open(self, schema: Any) -> None:
        try:
            self.writer = self.pa.parquet.ParquetWriter(self.working, schema)
        except OSError as e:
            raise _oserror(e, self.final) from None

    def _copy_partial(self, rows: int) -> None:
        pq = self.pa.parquet
        try:
            pf = pq.ParquetFile(self.path)
        except (self.pa.ArrowException, OSError) as e:
            raise InputError(
                f"{self.path}: the partial Parquet output cannot be read ({e}); start again with --overwrite"
            ) from None
        self.id_type = pf.schema_arrow.field("id").type
        schema = self._schema(self.id_type)  # the schema a fresh run writes (Parquet renames a
        self._open(schema)  # list's child "element" on reading: the file would differ)
        for g in range(pf.num_row_groups):
            if self.rows >= rows:
                break
            table = pf.read_row_group(g).cast(schema)
            self.writer.write_table(table, row_group_size=len(table))
            self.rows += len(table)
        if self.rows != rows:
            raise InputError(f"{self.path}: has {self.rows} rows where the progress record says {rows}")
        self.done_rows = rows

    def write(self, ids: list[Any], texts: list[str], answers: list[str] | None, vecs: np.ndarray) -> None:
        pa = self.pa
        try:
            id_arr = pa.array(ids, type=self.id_type)
        except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
            raise InputError(f"the ids must all be of one type (strings or integers): {e}") from None
        if self.writer is None:
            self.id_type = id_arr.type if id_arr.type != pa.null() else pa.int64()
            id_arr = id_arr.cast(self.id_type)
            self._open(self._schema(self.id_type))
        flat = pa.array(np.ascontiguousarray(vecs, dtype=self.dtype).reshape(-1))
        cols = [id_arr, pa.array(texts, type=pa.string())]
        if self.answers:
            cols.append(pa.array(answers, type=pa.string()))
        cols.append(pa.FixedSizeListArray.from_arrays(flat, self.dim))
        table = pa.Table.from_arrays(cols, schema=self.writer.schema)
        try:
            self.writer.write_table(table, row_group_size=len(table))
        except OSError as e:
            raise _oserror(e, self.final) from None
        self.rows += len(texts)

    def state(self) -> dict[str, Any]:
        return {"rows": self.done_rows}

    def close(self) -> None:
        """Write the footer and make the working file the partial (the job stops here)."""
        if self.writer is None:
            return
        self.writer.close()
        self.writer = None
        os.replace(self.working, self.path)
        self.done_rows = self.rows

    def discard(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
        self.working.unlink(missing_ok=True)

    def finish(self) -> None:
        if self.writer is None:  # no rows at all: an empty file of the schema
            self._open(self._schema(self.id_type or self.pa.int64()))
        self.writer.close()
        self.writer = None
        os.replace(self.working, self.final)
        self.path.unlink(missing_ok=True)
