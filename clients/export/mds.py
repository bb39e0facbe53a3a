"""MosaicML streaming: an MDS dataset (``index.json`` + ``shard.NNNNN.mds``), one sample per document.

Columns (sorted, as ``MDSWriter`` sorts them): ``input_ids``, ``ndarray:uint16`` (or ``uint32``),
the document's ids and its end-of-text token; ``label_mask``, ``ndarray:uint8``, 1 where the token
may be a target, 0 where not. ``streaming.StreamingDataset(local=OUT)`` yields ``{"input_ids",
"label_mask"}`` dicts.

Written to MDS version 2 as ``streaming.base.format.mds`` defines it (mosaicml-streaming itself pins
``transformers<5`` and imports ``torchvision``, so it cannot join tokfilter's environment): a shard
is the sample count (uint32), the sample offsets (uint32, count + 1), the writer's JSON config, then
the samples; a sample is the byte size of each variable-size column (uint32), then each column's
bytes; an ``ndarray:DTYPE`` value with dynamic shape is one byte ``ndim << 2 | shape dtype``
(0: uint8 .. 3: uint64), the shape in that dtype, then the values.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np

from tokfilter.clients.export.stream import Block, StreamInfo

SIZE_LIMIT = 1 << 26  # bytes per shard file, MDSWriter's default
INDEX = "index.json"
_SHAPE_DTYPES = ((1 << 8, 0, "<B"), (1 << 16, 1, "<H"), (1 << 32, 2, "<I"), (1 << 64, 3, "<Q"))


def encode_vector(values: np.ndarray) -> bytes:
    """An ``ndarray:DTYPE`` column value of a 1-d array (dtype fixed by the column, shape dynamic)."""
    n = len(values)
    code, fmt = next((c, f) for limit, c, f in _SHAPE_DTYPES if n < limit)
    return bytes([1 << 2 | code]) + struct.pack(fmt, n) + values.tobytes()


class MdsWriter:
    def __init__(self, out_dir: Path, info: StreamInfo, size_limit: int = SIZE_LIMIT):
        self.out_dir = out_dir
        self.config = {
            "version": 2, "format": "mds", "compression": None, "hashes": [], "size_limit": size_limit,
            "column_names": ["input_ids", "label_mask"],
            "column_encodings": [f"ndarray:{info.dtype.name}", "ndarray:uint8"],
            "column_sizes": [None, None],
        }
        self.config_bytes = json.dumps(self.config, sort_keys=True).encode()
        self.shards: list[dict] = []
        self.samples: list[bytes] = []
        self._bytes = 0

    def write(self, block: Block) -> None:
        ends = np.cumsum(block.doc_lengths)
        mask = block.label_mask.view(np.uint8)
        for lo, hi in zip((ends - block.doc_lengths).tolist(), ends.tolist()):
            ids, keep = encode_vector(block.ids[lo:hi]), encode_vector(mask[lo:hi])
            sample = struct.pack("<II", len(ids), len(keep)) + ids + keep
            if self.samples and self._shard_size(len(sample)) > self.config["size_limit"]:
                self._flush()
            self.samples.append(sample)
            self._bytes += len(sample)

    def _shard_size(self, extra: int) -> int:
        return 4 + 4 * (len(self.samples) + 2) + len(self.config_bytes) + self._bytes + extra

    def _flush(self) -> None:
        name = f"shard.{len(self.shards):05d}.mds"
        sizes = np.array([0] + [len(s) for s in self.samples], dtype=np.int64)
        offsets = np.cumsum(sizes) + 4 + 4 * len(sizes) + len(self.config_bytes)
        data = b"".join([struct.pack("<I", len(self.samples)), offsets.astype(np.uint32).tobytes(), self.config_bytes, *self.samples])
        (self.out_dir / name).write_bytes(data)
        self.shards.append({**self.config, "samples": len(self.samples), "zip_data": None,
                            "raw_data": {"basename": name, "bytes": len(data), "hashes": {}}})
        self.samples, self._bytes = [], 0

    def close(self) -> dict:
        if self.samples:
            self._flush()
        (self.out_dir / INDEX).write_text(json.dumps({"version": 2, "shards": self.shards}, sort_keys=True))
        return {"index": INDEX, "shards": len(self.shards), "columns": dict(zip(self.config["column_names"], self.config["column_encodings"]))}
