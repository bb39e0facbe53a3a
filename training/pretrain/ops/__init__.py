"""tokfilter.training.pretrain.ops: fused training ops (each with a reference, a kernel and a test)."""

from tokfilter.training.pretrain.ops.masked_ce import masked_linear_cross_entropy

__all__ = ["masked_linear_cross_entropy"]
