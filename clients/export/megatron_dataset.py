"""Megatron-core's GPTDataset, with tokfilter's mask in its ``loss_mask``.

``GPTDataset`` builds ``loss_mask`` from end-of-document and padding positions only; nothing in
megatron-core reads a per-token mask from data. ``MaskedGPTDataset`` reads the
``loss_mask_document`` indexed dataset that ``tokfilter export --format megatron`` writes beside
``text_document`` through the very same (document, offset, length) query as the tokens, and zeroes
the loss where a label is masked. Pass it where Megatron takes the dataset class:

    BlendedMegatronDatasetBuilder(MaskedGPTDataset, sizes, is_built_on_rank, config).build()

Needs megatron-core (the ``train`` extra).
"""

from __future__ import annotations

import numpy as np
import torch
from megatron.core.datasets.gpt_dataset import GPTDataset
from megatron.core.datasets.indexed_dataset import IndexedDataset

from tokfilter.clients.export.megatron import MASK_PREFIX, TOKENS_PREFIX


class MaskedGPTDataset(GPTDataset):
    """A GPTDataset over ``.../text_document`` whose ``loss_mask`` is also 0 where the label is masked."""

    def __init__(self, indexed_dataset: IndexedDataset, dataset_path: str | None, *args, **kwargs):
        super().__init__(indexed_dataset, dataset_path, *args, **kwargs)
        if dataset_path is None or not dataset_path.endswith(TOKENS_PREFIX):
            raise ValueError(f"dataset_path must end in {TOKENS_PREFIX!r} (tokfilter export --format megatron), got {dataset_path!r}")
        self.label_masks = IndexedDataset(dataset_path.removesuffix(TOKENS_PREFIX) + MASK_PREFIX, mmap=self.config.mmap_bin_files)

    def __getitem__(self, idx: int | None) -> dict[str, torch.Tensor]:
        item = super().__getitem__(idx)
        tokens, self.dataset = self.dataset, self.label_masks
        try:  # the sample's mask bytes, read exactly as its tokens were
            mask, _ = self._query_document_sample_shuffle_indices(0 if idx is None else idx)
        finally:
            self.dataset = tokens
        # the label of position t is token t + 1 (without the extra token, the last label is padding)
        label_mask = mask[1:] if self.config.add_extra_token_to_sequence else np.append(mask[1:], 0)
        keep = torch.from_numpy(label_mask == 1)
        item["loss_mask"] = item["loss_mask"] * keep  # not in place: GPTDataset caches and reuses its mask tensor
        return item
