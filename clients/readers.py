"""Input records for the filter: JSONL (plain, .gz, .zst), Parquet, or ``-`` for stdin.

Each input yields its records in order with a 1-based ``position`` (line for JSONL, row for Parquet),
so a run can say how far it read each input and resume there. A malformed record is yielded with an
``error`` naming ``file:line`` instead of being dropped.
"""

from __future__ import annotations

import gzip
import io
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Iterator

from tokfilter.errors import TokfilterError

STDIN = "-"


@dataclass(frozen=True)
class Record:
    """One input document, or (``error`` set) the reason a line could not be read as one."""

    input_index: int
    position: int
    doc_id: str
    text: str | None
    error: str | None = None


def input_kind(path: str) -> str:
    if path == STDIN:
        return "jsonl"
    name = path.lower()
    if name.endswith(".parquet"):
        return "parquet"
    if name.endswith((".jsonl", ".json", ".jsonl.gz", ".json.gz", ".jsonl.zst", ".json.zst")):
        return "jsonl"
    raise TokfilterError(f"input {path}: format must be .jsonl, .jsonl.gz, .jsonl.zst, .parquet or '-' (stdin)")


def check_inputs(paths: list[str]) -> None:
    """Fail early, naming the input, on an unknown format or a missing file."""
    if not paths:
        raise TokfilterError("INPUT: give at least one file, or '-' for stdin")
    for p in paths:
        input_kind(p)
        if p != STDIN and not Path(p).is_file():
            raise TokfilterError(f"input {p}: no such file")
    if paths.count(STDIN) > 1:
        raise TokfilterError("INPUT: stdin ('-') can be given only once")


class _ByteCounter:
    """Bytes read so far from an input's file on disk (compressed size for .gz/.zst): progress."""

    def __init__(self, raw: IO[bytes] | None):
        self.raw = raw

    def tell(self) -> int:
        try:
            return self.raw.tell() if self.raw is not None else 0
        except (OSError, ValueError):
            return 0


def _open_text(path: str) -> tuple[IO[str], _ByteCounter]:
    if path == STDIN:
        return io.TextIOWrapper(sys.stdin.buffer, encoding="utf-8", errors="surrogateescape"), _ByteCounter(None)
    raw = open(path, "rb")
    if path.endswith(".gz"):
        stream: IO[bytes] = gzip.GzipFile(fileobj=raw)
    elif path.endswith(".zst"):
        import zstandard

        stream = zstandard.ZstdDecompressor().stream_reader(raw)
    else:
        stream = raw
    return io.TextIOWrapper(stream, encoding="utf-8", errors="surrogateescape"), _ByteCounter(raw)


def _record_from_json(
    line: str, where: str, input_index: int, position: int, text_field: str, id_field: str
) -> Record:
    default_id = where
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as err:
        return Record(input_index, position, default_id, None, f"{where}: not valid JSON ({err.msg} at column {err.colno})")
    if not isinstance(obj, dict):
        return Record(input_index, position, default_id, None, f"{where}: a record must be a JSON object, got {type(obj).__name__}")
    text = obj.get(text_field)
    if not isinstance(text, str):
        return Record(input_index, position, default_id, None, f"{where}: field {text_field!r} must be a string, got {type(text).__name__}")
    doc_id = obj.get(id_field, default_id)
    return Record(input_index, position, str(doc_id), text)


def iter_records(
    path: str, input_index: int, text_field: str = "text", id_field: str = "id", skip: int = 0,
    progress: list[int] | None = None,
) -> Iterator[Record]:
    """Records of one input after the first ``skip`` (already processed by an earlier run).

    ``progress``, when given, is a one-element list kept at the bytes read so far from the file.
    """
    name = "<stdin>" if path == STDIN else path
    if input_kind(path) == "parquet":
        yield from _iter_parquet(path, input_index, text_field, id_field, skip, progress)
        return
    stream, counter = _open_text(path)
    with stream:
        for position, line in enumerate(stream, start=1):
            if progress is not None:
                progress[0] = counter.tell()
            if position <= skip:
                continue
            if not line.strip():
                continue
            yield _record_from_json(line, f"{name}:{position}", input_index, position, text_field, id_field)


def _iter_parquet(
    path: str, input_index: int, text_field: str, id_field: str, skip: int, progress: list[int] | None
) -> Iterator[Record]:
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(path)
    names = pf.schema_arrow.names
    if text_field not in names:
        raise TokfilterError(f"input {path}: --text-field {text_field!r} is not a column (columns: {names})")
    columns = [text_field] + ([id_field] if id_field in names else [])
    size, rows = Path(path).stat().st_size, max(pf.metadata.num_rows, 1)
    position = 0
    for batch in pf.iter_batches(columns=columns, batch_size=1024):
        texts = batch.column(text_field).to_pylist()
        ids = batch.column(id_field).to_pylist() if id_field in names else [None] * len(texts)
        for text, doc_id in zip(texts, ids):
            position += 1
            if position <= skip:
                continue
            where = f"{path}:{position}"
            if progress is not None:
                progress[0] = size * position // rows
            if not isinstance(text, str):
                yield Record(input_index, position, where, None, f"{where}: field {text_field!r} must be a string, got {type(text).__name__}")
            else:
                yield Record(input_index, position, where if doc_id is None else str(doc_id), text)
