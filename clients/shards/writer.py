"""On-disk masked shards: written atomically, read by memory map. The format is in docs/shards.md.

A shard ``shard-NNNNN`` is three files: ``.ids.npy`` (uint16 or uint32 target token ids, documents
joined with an end-of-text token after each), ``.probs.npy`` (float16 filter probability per token, 0
for the end-of-text tokens) and ``.docs.json`` (document ids, start offsets, lengths, document
scores). ``manifest.json`` lists the finished shards and how far each input was read; it is replaced
after every shard, so a killed run resumes exactly at the last shard boundary.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tokfilter.errors import TokfilterError

FORMAT = "tokfilter-shards"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
SHARD_SUFFIXES = (".ids.npy", ".probs.npy", ".docs.json")


def shard_name(index: int) -> str:
    return f"shard-{index:05d}"


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 when every id fits, else uint32."""
    if vocab_size <= 1 << 16:
        return np.dtype(np.uint16)
    if vocab_size <= 1 << 32:
        return np.dtype(np.uint32)
    raise TokfilterError(f"target tokenizer vocab_size must be <= 2**32, got {vocab_size}")


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _atomic_save_npy(path: Path, array: np.ndarray) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        np.save(f, array, allow_pickle=False)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_json_atomic(path: Path, obj: Any) -> None:
    _atomic_write_bytes(path, (json.dumps(obj, indent=1, sort_keys=True) + "\n").encode())


def read_manifest(out_dir: Path | str) -> dict:
    path = Path(out_dir) / MANIFEST
    if not path.is_file():
        raise TokfilterError(f"no {MANIFEST} in {out_dir}: not a shard directory")
    manifest = json.loads(path.read_text())
    if manifest.get("format") != FORMAT or manifest.get("version") != FORMAT_VERSION:
        raise TokfilterError(
            f"{path}: format must be {FORMAT!r} version {FORMAT_VERSION}, got {manifest.get('format')!r} "
            f"version {manifest.get('version')!r}"
        )
    return manifest


@dataclass
class ShardWriter:
    """Accumulates documents in input order into shards of about ``shard_tokens`` tokens.

    ``manifest`` is the run's metadata (inputs, model, tokenizer, threshold); the writer owns its
    ``shards``, ``counts`` and input positions and rewrites it atomically after each shard.
    """

    out_dir: Path
    manifest: dict
    shard_tokens: int = 1 << 20
    _ids: list[np.ndarray] = field(default_factory=list)
    _probs: list[np.ndarray] = field(default_factory=list)
    _doc_ids: list[str] = field(default_factory=list)
    _doc_scores: list[float] = field(default_factory=list)
    _n_tokens: int = 0
    _pending_counts: dict = field(default_factory=dict)
    _pending_positions: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.shard_tokens < 1:
            raise TokfilterError(f"shard_tokens must be >= 1, got {self.shard_tokens}")
        self.out_dir = Path(self.out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.dtype = np.dtype(self.manifest["dtype"])
        self.eot_id = int(self.manifest["eot_id"])
        self.threshold = float(self.manifest["threshold"])
        self.manifest.setdefault("shards", [])
        self.manifest.setdefault("counts", {})
        self.manifest.setdefault("complete", False)

    def count(self, name: str, n: int = 1) -> None:
        """Add to a manifest counter; it becomes durable with the next shard (or ``close``)."""
        self._pending_counts[name] = self._pending_counts.get(name, 0) + n

    def advance(self, input_index: int, records_read: int) -> None:
        """Record that input ``input_index`` has been consumed up to record ``records_read``."""
        self._pending_positions[input_index] = records_read

    def add(self, doc_id: str, ids: np.ndarray, probs: np.ndarray, doc_score: float) -> None:
        if len(ids) != len(probs):
            raise ValueError(f"document {doc_id!r}: {len(ids)} ids but {len(probs)} probabilities")
        ids = np.asarray(ids)
        if len(ids) and int(ids.max()) > np.iinfo(self.dtype).max:
            raise TokfilterError(f"document {doc_id!r}: token id {int(ids.max())} does not fit {self.dtype}")
        probs16 = np.asarray(probs, dtype=np.float16)
        self._ids.append(np.append(ids.astype(self.dtype), self.dtype.type(self.eot_id)))
        self._probs.append(np.append(probs16, np.float16(0)))
        self._doc_ids.append(str(doc_id))
        self._doc_scores.append(float(doc_score))
        self._n_tokens += len(ids) + 1
        self.count("docs")
        self.count("tokens", len(ids))
        self.count("flagged", int((probs16 >= self.threshold).sum()))

    def flush_if_full(self) -> None:
        """Close the open shard once it holds ``shard_tokens`` tokens. The filter calls this only
        between its document buffers, so a resumed run buffers, batches and scores exactly as an
        uninterrupted one and writes identical bytes."""
        if self._n_tokens >= self.shard_tokens:
            self.flush()

    def flush(self) -> None:
        """Write the open shard (if any) and the manifest, each atomically, shard files first."""
        if self._ids:
            name = shard_name(len(self.manifest["shards"]))
            ids = np.concatenate(self._ids)
            probs = np.concatenate(self._probs)
            lengths = [len(a) - 1 for a in self._ids]
            starts = np.concatenate([[0], np.cumsum([n + 1 for n in lengths])[:-1]]).astype(int).tolist()
            _atomic_save_npy(self.out_dir / f"{name}.ids.npy", ids)
            _atomic_save_npy(self.out_dir / f"{name}.probs.npy", probs)
            docs = {"ids": self._doc_ids, "starts": starts, "lengths": lengths, "doc_scores": self._doc_scores}
            write_json_atomic(self.out_dir / f"{name}.docs.json", docs)
            self.manifest["shards"].append(
                {"name": name, "docs": len(lengths), "tokens": int(len(ids)),
                 "flagged": int((probs >= self.threshold).sum())}
            )
            self._ids, self._probs, self._doc_ids, self._doc_scores, self._n_tokens = [], [], [], [], 0
        counts = self.manifest["counts"]
        for k, v in self._pending_counts.items():
            counts[k] = counts.get(k, 0) + v
        for i, pos in self._pending_positions.items():
            self.manifest["inputs"][i]["records_read"] = pos
        self._pending_counts, self._pending_positions = {}, {}
        write_json_atomic(self.out_dir / MANIFEST, self.manifest)

    def close(self) -> None:
        """Flush the last shard and mark the run complete."""
        self.manifest["complete"] = True
        self.flush()


def remove_unlisted_shards(out_dir: Path, manifest: dict) -> list[Path]:
    """Delete shard files and temporaries a killed run left behind that the manifest does not list."""
    listed = {s["name"] for s in manifest.get("shards", [])}
    removed = []
    for path in Path(out_dir).iterdir():
        if path.name.endswith(".tmp") or (
            path.name.startswith("shard-") and path.name.split(".")[0] not in listed
        ):
            path.unlink()
            removed.append(path)
    return removed


@dataclass(frozen=True)
class Shard:
    """One finished shard, memory-mapped."""

    name: str
    ids: np.ndarray
    probs: np.ndarray
    doc_ids: list[str]
    starts: np.ndarray
    lengths: np.ndarray
    doc_scores: np.ndarray


def open_shard(out_dir: Path | str, name: str) -> Shard:
    out_dir = Path(out_dir)
    docs = json.loads((out_dir / f"{name}.docs.json").read_text())
    return Shard(
        name=name,
        ids=np.load(out_dir / f"{name}.ids.npy", mmap_mode="r"),
        probs=np.load(out_dir / f"{name}.probs.npy", mmap_mode="r"),
        doc_ids=docs["ids"],
        starts=np.asarray(docs["starts"], dtype=np.int64),
        lengths=np.asarray(docs["lengths"], dtype=np.int64),
        doc_scores=np.asarray(docs["doc_scores"], dtype=np.float32),
    )


def open_shards(out_dir: Path | str) -> tuple[dict, list[Shard]]:
    """The manifest and every shard it lists, in order."""
    manifest = read_manifest(out_dir)
    return manifest, [open_shard(out_dir, s["name"]) for s in manifest["shards"]]
