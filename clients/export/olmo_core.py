"""OLMo-core: token ids and label masks as the flat arrays its numpy datasets memory-map.

Per source shard ``part-NNNNN``: ``part-NNNNN.token_ids.npy``, the token ids (the shards' dtype,
uint16 or uint32, no header: OLMo-core reads raw ``np.memmap`` files), and ``part-NNNNN.label_mask.npy``,
one byte per token (numpy bool): 0 where the token must not be a target. OLMo-core's
``NumpyFSLDataset(*token_files, label_mask_paths=mask_files, ...)`` yields them as ``input_ids`` and
``label_mask``, and its ``get_labels`` sets the label of a masked token to -100 before shifting.
"""

from __future__ import annotations

from pathlib import Path

from tokfilter.clients.export.stream import Block, StreamInfo


class OlmoCoreWriter:
    """Appends each block's ids and label mask to the files of its source shard."""

    def __init__(self, out_dir: Path, info: StreamInfo):
        self.out_dir, self.info = out_dir, info
        self.part: int | None = None
        self.files: list[dict] = []
        self._ids = self._mask = None

    def write(self, block: Block) -> None:
        if block.part != self.part:
            self._close_part()
            self.part = block.part
            name = f"part-{block.part:05d}"
            self.files.append({"token_ids": f"{name}.token_ids.npy", "label_mask": f"{name}.label_mask.npy", "tokens": 0})
            self._ids = open(self.out_dir / self.files[-1]["token_ids"], "wb")
            self._mask = open(self.out_dir / self.files[-1]["label_mask"], "wb")
        self._ids.write(memoryview(block.ids))
        self._mask.write(memoryview(block.label_mask))
        self.files[-1]["tokens"] += len(block.ids)

    def _close_part(self) -> None:
        for f in (self._ids, self._mask):
            if f is not None:
                f.close()
        self._ids = self._mask = None

    def close(self) -> dict:
        self._close_part()
        return {"files": self.files, "label_mask_dtype": "bool"}
