"""A small GPT, readable top to bottom (nanoGPT style): RMSNorm, rotary position embeddings,
causal self-attention, GELU MLP, tied input/output embeddings.

The model never materializes [tokens, vocab] logits: ``token_losses`` and ``loss`` hand the final
hidden states and the tied embedding matrix to the fused masked cross-entropy op, so a masked
target costs nothing and the mean runs over unmasked targets only (the paper's rule).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from tokfilter.errors import TokfilterError
from tokfilter.training.pretrain.ops import masked_linear_cross_entropy

IGNORE_INDEX = -100


@dataclass(frozen=True)
class GPTConfig:
    vocab_size: int
    n_layer: int
    n_head: int
    n_embd: int
    max_seq_len: int = 256
    rope_base: float = 10000.0


# Named sizes: (n_layer, n_head, n_embd). Parameter counts depend on the vocabulary; with the
# demo's 8192-token BPE they run from ~1M ("1m") to ~45M ("45m", for a GPU). "tiny" is for tests only.
SIZES: dict[str, tuple[int, int, int]] = {
    "tiny": (1, 2, 32),
    "1m": (2, 4, 96),
    "3m": (4, 4, 160),
    "6m": (4, 4, 256),
    "10m": (6, 6, 288),
    "20m": (8, 8, 416),
    "45m": (10, 9, 576),
}


def config_for_size(size: str, vocab_size: int, max_seq_len: int) -> GPTConfig:
    """The GPTConfig of a named size preset."""
    if size not in SIZES:
        raise TokfilterError(f"size: unknown preset {size!r}; choose one of {', '.join(SIZES)}")
    n_layer, n_head, n_embd = SIZES[size]
    return GPTConfig(vocab_size=vocab_size, n_layer=n_layer, n_head=n_head, n_embd=n_embd, max_seq_len=max_seq_len)


def rope_tables(seq_len: int, head_dim: int, base: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin tables [seq_len, head_dim/2] of the rotary embedding."""
    inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    angles = torch.outer(torch.arange(seq_len, dtype=torch.float32), inv_freq)
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate pairs (first half, second half) of the head dimension of x [B, heads, T, head_dim]."""
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    cos, sin = cos[: x.shape[-2]].to(x.dtype), sin[: x.shape[-2]].to(x.dtype)
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.n_head = config.n_head
        self.qkv = nn.Linear(config.n_embd, 3 * config.n_embd, bias=False)
        self.proj = nn.Linear(config.n_embd, config.n_embd, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.proj(y.transpose(1, 2).contiguous().view(B, T, C))


class MLP(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.up = nn.Linear(config.n_embd, 4 * config.n_embd, bias=False)
        self.down = nn.Linear(4 * config.n_embd, config.n_embd, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(F.gelu(self.up(x)))


class Block(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.norm1 = nn.RMSNorm(config.n_embd)
        self.attn = CausalSelfAttention(config)
        self.norm2 = nn.RMSNorm(config.n_embd)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), cos, sin)
        return x + self.mlp(self.norm2(x))


class GPT(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        if config.n_embd % config.n_head or (config.n_embd // config.n_head) % 2:
            raise TokfilterError(f"n_embd: {config.n_embd} must split into {config.n_head} heads of even size")
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.n_embd)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.norm = nn.RMSNorm(config.n_embd)
        cos, sin = rope_tables(config.max_seq_len, config.n_embd // config.n_head, config.rope_base)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.apply(self._init_weights)
        # GPT-2 scaled init of the residual projections keeps the residual stream's variance flat.
        for name, p in self.named_parameters():
            if name.endswith(("proj.weight", "down.weight")):
                nn.init.normal_(p, std=0.02 / math.sqrt(2 * config.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.02)

    def num_params(self, non_embedding: bool = True) -> int:
        """Parameter count; non-embedding by default, the N of the compute rule C = 6 N D."""
        n = sum(p.numel() for p in self.parameters())
        return n - self.embed.weight.numel() if non_embedding else n

    def hidden_states(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Final normalized hidden states [B, T, n_embd]."""
        if input_ids.shape[1] > self.config.max_seq_len:
            raise TokfilterError(f"sequence length: {input_ids.shape[1]} exceeds max_seq_len {self.config.max_seq_len}")
        x = self.embed(input_ids)
        for block in self.blocks:
            x = block(x, self.rope_cos, self.rope_sin)
        return self.norm(x)

    def loss_operands(self, input_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Hidden states [B*T, n_embd] and the tied embedding for the fused loss. Under autocast both
        are cast to its dtype, so the loss's matmuls run there too (the op accumulates the loss and
        the weight gradient in float32 whatever the operands)."""
        h = self.hidden_states(input_ids)
        h, weight = h.reshape(-1, h.shape[-1]), self.embed.weight
        device = h.device.type
        if torch.is_autocast_enabled(device):
            dtype = torch.get_autocast_dtype(device)
            h, weight = h.to(dtype), weight.to(dtype)
        return h, weight

    def token_losses(self, input_ids: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Per-target cross-entropy [B, T] in nats (0 where target == IGNORE_INDEX)."""
        h, weight = self.loss_operands(input_ids)
        losses = masked_linear_cross_entropy(h, weight, targets.reshape(-1), None, reduction="none", ignore_index=IGNORE_INDEX)
        return losses.view(targets.shape)

    def loss(self, input_ids: torch.Tensor, targets: torch.Tensor, loss_weights: torch.Tensor | None = None) -> torch.Tensor:
        """Mean cross-entropy over targets with non-zero weight (0 for an all-masked batch)."""
        h, weight = self.loss_operands(input_ids)
        weights = None if loss_weights is None else loss_weights.reshape(-1)
        return masked_linear_cross_entropy(h, weight, targets.reshape(-1), weights, reduction="mean", ignore_index=IGNORE_INDEX)

    def config_dict(self) -> dict:
        return asdict(self.config)


def save_model(model: GPT, path: Path | str, extra: dict | None = None) -> None:
    """Save weights and config (plus any run metadata) in one torch file."""
    torch.save({"config": model.config_dict(), "state_dict": model.state_dict(), "meta": extra or {}}, path)


def load_model(path: Path | str, device: str = "cpu") -> tuple[GPT, dict]:
    """Load a model saved by ``save_model``; returns (model in eval mode, metadata)."""
    try:
        blob = torch.load(path, map_location=device, weights_only=True)
    except FileNotFoundError as err:
        raise TokfilterError(f"model: no checkpoint at {path}") from err
    model = GPT(GPTConfig(**blob["config"])).to(device)
    model.load_state_dict(blob["state_dict"])
    model.eval()
    return model, blob["meta"]
