"""Megatron-core: two indexed datasets (``.bin`` + ``.idx``) with the same documents.

``text_document.bin/.idx``: the token ids, one sequence per document (its end-of-text token
included), dtype uint16 when the shards are uint16, else int32 (Megatron's index has no uint32).
``loss_mask_document.bin/.idx``: one uint8 per token, 1 where it may be a target, 0 where not; the
same sequence lengths, so a sample's mask is read with the same (document, offset, length) as its
tokens. The ``.idx`` layout is ``megatron.core.datasets.indexed_dataset``'s: the header
``MMIDIDX\\x00\\x00``, version 1 (``<Q``), the dtype code (``<B``), the sequence and document counts
(``<Q`` each), then int32 sequence lengths, int64 byte offsets and int64 document indices (a document
is one sequence here). Lengths are spooled to disk while the ``.bin`` files are written, so memory
stays bounded however many documents there are.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

from tokfilter.clients.export.stream import Block, StreamInfo
from tokfilter.errors import TokfilterError

TOKENS_PREFIX = "text_document"
MASK_PREFIX = "loss_mask_document"
INDEX_HEADER = b"MMIDIDX\x00\x00"
DTYPE_CODES = {np.dtype(np.uint8): 1, np.dtype(np.int32): 4, np.dtype(np.uint16): 8}  # megatron's DType enum
_CHUNK = 1 << 22  # sequences per slice when writing the index


def token_dtype(shard_dtype: np.dtype) -> np.dtype:
    """Megatron's dtype for the shards' ids: uint16 as is, uint32 as int32."""
    return np.dtype(np.uint16) if shard_dtype == np.uint16 else np.dtype(np.int32)


class MegatronWriter:
    def __init__(self, out_dir: Path, info: StreamInfo):
        self.out_dir = out_dir
        self.dtype = token_dtype(info.dtype)
        self._tokens = open(out_dir / f"{TOKENS_PREFIX}.bin", "wb")
        self._mask = open(out_dir / f"{MASK_PREFIX}.bin", "wb")
        self._lengths_path = out_dir / "sequence_lengths.tmp"
        self._lengths = open(self._lengths_path, "wb")
        self.documents = 0

    def write(self, block: Block) -> None:
        ids = block.ids
        if ids.dtype != self.dtype:
            if len(ids) and int(ids.max()) > np.iinfo(np.int32).max:
                raise TokfilterError(f"token id {int(ids.max())} does not fit Megatron's int32 index dtype")
            ids = ids.astype(self.dtype)
        self._tokens.write(memoryview(ids))
        self._mask.write(memoryview(block.label_mask.view(np.uint8)))
        self._lengths.write(memoryview(block.doc_lengths.astype(np.int32)))
        self.documents += len(block.doc_lengths)

    def close(self) -> dict:
        for f in (self._tokens, self._mask, self._lengths):
            f.close()
        lengths = np.memmap(self._lengths_path, dtype=np.int32, mode="r") if self.documents else np.zeros(0, np.int32)
        write_index(self.out_dir / f"{TOKENS_PREFIX}.idx", lengths, self.dtype)
        write_index(self.out_dir / f"{MASK_PREFIX}.idx", lengths, np.dtype(np.uint8))
        del lengths
        self._lengths_path.unlink()
        return {"tokens_prefix": TOKENS_PREFIX, "loss_mask_prefix": MASK_PREFIX, "token_dtype": self.dtype.name,
                "loss_mask_dtype": "uint8", "documents": self.documents}


def write_index(path: Path, lengths: np.ndarray, dtype: np.dtype) -> None:
    """The ``.idx`` of sequences of ``lengths`` items of ``dtype``, each sequence its own document."""
    n = len(lengths)
    itemsize = np.int64(dtype.itemsize)
    with open(path, "wb") as f:
        f.write(INDEX_HEADER + struct.pack("<Q", 1) + struct.pack("<B", DTYPE_CODES[dtype]))
        f.write(struct.pack("<Q", n) + struct.pack("<Q", n + 1))
        for lo in range(0, n, _CHUNK):
            f.write(memoryview(np.ascontiguousarray(lengths[lo : lo + _CHUNK])))
        pointer = np.int64(0)
        for lo in range(0, n, _CHUNK):
            sizes = lengths[lo : lo + _CHUNK].astype(np.int64) * itemsize
            ends = np.cumsum(sizes) + pointer
            f.write(memoryview(ends - sizes))
            pointer = ends[-1]
        for lo in range(0, n + 1, _CHUNK):
            f.write(memoryview(np.arange(lo, min(lo + _CHUNK, n + 1), dtype=np.int64)))
