"""tokfilter.training.ops: fused training ops (each with a reference, a kernel and a test)."""

from tokfilter.training.ops.masked_ce import masked_linear_cross_entropy

__all__ = ["masked_linear_cross_entropy"]
