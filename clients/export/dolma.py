"""Dolma attributes: tokfilter's spans and scores beside a Dolma dataset, for ``dolma mix``.

Dolma keeps documents and attributes apart (allenai/dolma docs/data-format.md): an attributes file
mirrors a documents file, ``.../documents/<path>`` -> ``.../attributes/<NAME>/<path>``, one row per
document in the same order, ``{"id": ..., "attributes": {"<NAME>__<tagger>__<attribute>": [[start,
end, score], ...]}}`` with character offsets into the text. ``tokfilter filter --dolma-attributes
NAME`` writes, per document:

* ``NAME__tokfilter__forget``: the flagged spans at the run's token threshold, each with its highest
  probability (empty when the cascade skipped the token model);
* ``NAME__tokfilter__doc_score``: ``[[0, len(text), document score]]``;
* ``NAME__tokfilter__flagged_fraction``: ``[[0, len(text), share of classifier tokens flagged]]``.

The mixer's ``span_replacement`` (``span: $.attributes.NAME__tokfilter__forget``, ``replacement:
"[hidden]"``) hides the spans; a ``filter.exclude`` on the document score drops documents.
"""

from __future__ import annotations

import gzip
import io
import json
from pathlib import Path
from typing import Sequence

from tokfilter.errors import TokfilterError

TAGGER = "tokfilter"
ATTRIBUTES = ("forget", "doc_score", "flagged_fraction")


def attributes_path(document_path: str | Path, name: str) -> Path:
    """Dolma's rule: the last ``documents`` directory of the path becomes ``attributes/<name>``."""
    parts = Path(document_path).parts
    if "documents" not in parts[:-1]:
        raise TokfilterError(f"--dolma-attributes: input {document_path} is not inside a 'documents' directory "
                             f"(Dolma's layout: DATASET/documents/... gets DATASET/attributes/{name}/...)")
    at = len(parts) - 2 - parts[:-1][::-1].index("documents")
    return Path(*parts[:at], "attributes", name, *parts[at + 1 :])


def attribute_keys(name: str) -> dict[str, str]:
    return {attr: f"{name}__{TAGGER}__{attr}" for attr in ATTRIBUTES}


def attributes_row(doc_id: str, name: str, text_length: int, spans: Sequence[Sequence[float]], doc_score: float,
                   flagged_fraction: float) -> dict:
    keys = attribute_keys(name)
    return {"id": doc_id, "attributes": {
        keys["forget"]: [[int(s), int(e), float(p)] for s, e, p in spans],
        keys["doc_score"]: [[0, text_length, float(doc_score)]],
        keys["flagged_fraction"]: [[0, text_length, float(flagged_fraction)]],
    }}


def _open_text(path: Path):
    """A text writer compressed as the documents file is (.gz, .zst, or plain)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".gz":
        return gzip.open(path, "wt", encoding="utf-8")
    if path.suffix == ".zst":
        import zstandard

        return io.TextIOWrapper(zstandard.ZstdCompressor().stream_writer(open(path, "wb")), encoding="utf-8")
    return open(path, "w", encoding="utf-8")


class DolmaAttributesWriter:
    """One attributes file per input, rows in input order (a malformed record gets an empty row with
    the reader's ``file:line`` as its id, so the files stay line-aligned with the documents)."""

    def __init__(self, inputs: Sequence[str], name: str):
        if not name or "/" in name or "__" in name:
            raise TokfilterError(f"--dolma-attributes: NAME must be non-empty without '/' or '__', got {name!r}")
        for path in inputs:
            if path.lower().endswith(".parquet") or path == "-":
                raise TokfilterError(f"--dolma-attributes: input {path} is not a Dolma JSONL documents file")
        self.name = name
        self.paths = [attributes_path(p, name) for p in inputs]
        self._files: dict[int, object] = {}

    def write(self, input_index: int, row: dict) -> None:
        if input_index not in self._files:
            self._files[input_index] = _open_text(self.paths[input_index])
        self._files[input_index].write(json.dumps(row) + "\n")

    def close(self) -> None:
        """Close the files; an input without records still gets its (empty) attributes file."""
        for i in range(len(self.paths)):
            if i not in self._files:
                self._files[i] = _open_text(self.paths[i])
            self._files[i].close()
