"""Masked shards in the formats trainers read: OLMo-core, Megatron-core, Hugging Face datasets,
MosaicML streaming (docs/trainers.md). One module per format; ``stream`` is the shared core."""

from __future__ import annotations

import json
from pathlib import Path

from tokfilter.clients.export.hf import HfWriter
from tokfilter.clients.export.mds import MdsWriter
from tokfilter.clients.export.megatron import MegatronWriter
from tokfilter.clients.export.olmo_core import OlmoCoreWriter
from tokfilter.clients.export.stream import DEFAULT_BLOCK_TOKENS, Progress, ShardStream
from tokfilter.errors import TokfilterError

WRITERS = {"olmo-core": OlmoCoreWriter, "megatron": MegatronWriter, "hf": HfWriter, "mds": MdsWriter}
FORMATS = tuple(WRITERS)
EXPORT_INFO = "export.json"


def export_shards(shard_dir: Path | str, out_dir: Path | str, fmt: str, mode: str, threshold: float | None = None,
                  doc_threshold: float | None = None, progress: bool = True,
                  block_tokens: int = DEFAULT_BLOCK_TOKENS) -> dict:
    """Write the shards of ``shard_dir`` to ``out_dir`` in format ``fmt`` under ``mode`` (MaskedShards'
    semantics; ``threshold`` None: the manifest's). Returns what ``export.json`` records."""
    if fmt not in WRITERS:
        raise TokfilterError(f"format must be one of {FORMATS}, got {fmt!r}")
    stream = ShardStream(shard_dir, mode, threshold, doc_threshold, block_tokens)
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise TokfilterError(f"--out {out_dir} is not empty: export writes into a new or empty directory")
    out_dir.mkdir(parents=True, exist_ok=True)
    writer = WRITERS[fmt](out_dir, stream.info)
    bar = Progress(stream.info.tokens, progress, desc=f"export {fmt}")
    tokens = docs = masked = 0
    try:
        for block in stream.blocks():
            if len(block.doc_lengths):
                writer.write(block)
            tokens += len(block.ids)
            masked += len(block.ids) - int(block.label_mask.sum())
            docs += len(block.doc_lengths)
            bar.update(block.source_tokens)
        files = writer.close()
    finally:
        bar.close()
    record = {"format": fmt, "source": str(Path(shard_dir).resolve()), **stream.info.describe(),
              "tokens": tokens, "documents": docs, "masked_tokens": masked, **files}
    (out_dir / EXPORT_INFO).write_text(json.dumps(record, indent=1) + "\n")
    return record
