"""The GPT and the learning-rate schedule: causality, RoPE, size presets, schedule shape."""

import math

import pytest
import torch
from hypothesis import given, settings, strategies as st

from tokfilter.errors import TokfilterError
from tokfilter.training.pretrain.model import GPT, SIZES, apply_rope, config_for_size, load_model, rope_tables, save_model
from tokfilter.training.pretrain.train import learning_rate


def test_model_is_causal():
    torch.manual_seed(0)
    model = GPT(config_for_size("tiny", 50, 16)).eval()
    ids = torch.randint(0, 50, (1, 16))
    changed = ids.clone()
    changed[0, 10] = (ids[0, 10] + 1) % 50
    with torch.no_grad():
        a, b = model.hidden_states(ids), model.hidden_states(changed)
    assert torch.allclose(a[:, :10], b[:, :10], atol=1e-6)
    assert not torch.allclose(a[:, 10:], b[:, 10:])


def test_masked_loss_is_mean_over_unmasked_targets():
    torch.manual_seed(0)
    model = GPT(config_for_size("tiny", 50, 16)).eval()
    ids, targets = torch.randint(0, 50, (2, 16)), torch.randint(0, 50, (2, 16))
    weights = (torch.rand(2, 16) > 0.5).float()
    with torch.no_grad():
        per_token = model.token_losses(ids, targets)
        expected = (per_token * weights).sum() / weights.sum()
        assert torch.allclose(model.loss(ids, targets, weights), expected, atol=1e-5)


@settings(max_examples=30, deadline=None)
@given(seq_len=st.integers(1, 32), half=st.integers(1, 16), seed=st.integers(0, 1000))
def test_rope_preserves_norms_and_is_relative(seq_len, half, seed):
    g = torch.Generator().manual_seed(seed)
    cos, sin = rope_tables(seq_len + 1, 2 * half, 10000.0)
    q, k = torch.randn(1, 1, seq_len, 2 * half, generator=g), torch.randn(1, 1, seq_len, 2 * half, generator=g)
    rq = apply_rope(q, cos, sin)
    assert torch.allclose(rq.norm(dim=-1), q.norm(dim=-1), atol=1e-4)
    # same vectors at every position: the dot product depends only on the offset
    qs, ks = q[..., :1, :].expand_as(q), k[..., :1, :].expand_as(k)
    rq, rk = apply_rope(qs, cos, sin), apply_rope(ks, cos, sin)
    if seq_len >= 2:
        d01 = (rq[..., 0, :] * rk[..., 1, :]).sum()
        d12 = (rq[..., seq_len - 2, :] * rk[..., seq_len - 1, :]).sum()
        assert torch.allclose(d01, d12, atol=1e-3)


def test_size_presets_span_one_to_twenty_million_params():
    counts = {s: GPT(config_for_size(s, 8192, 128)).num_params(non_embedding=False) for s in ("1m", "20m")}
    assert 0.8e6 <= counts["1m"] <= 1.5e6
    assert 15e6 <= counts["20m"] <= 25e6
    with pytest.raises(TokfilterError, match="size"):
        config_for_size("huge", 8192, 128)
    assert list(SIZES)[0] == "tiny"


def test_save_load_round_trip(tmp_path):
    model = GPT(config_for_size("tiny", 40, 8))
    save_model(model, tmp_path / "m.pt", {"run_type": "mask"})
    loaded, meta = load_model(tmp_path / "m.pt")
    ids = torch.randint(0, 40, (1, 8))
    with torch.no_grad():
        assert torch.equal(model.eval().hidden_states(ids), loaded.hidden_states(ids))
    assert meta == {"run_type": "mask"}
    with pytest.raises(TokfilterError, match="model"):
        load_model(tmp_path / "missing.pt")


@settings(max_examples=200, deadline=None)
@given(
    p=st.floats(0, 1), q=st.floats(0, 1), peak=st.floats(1e-5, 1.0),
    warmup=st.floats(0, 0.5), min_ratio=st.floats(0, 1),
)
def test_learning_rate_schedule_shape(p, q, peak, warmup, min_ratio):
    lo, hi = sorted((p, q))
    a, b = learning_rate(lo, peak, warmup, min_ratio), learning_rate(hi, peak, warmup, min_ratio)
    assert 0 <= a <= peak * (1 + 1e-9) and 0 <= b <= peak * (1 + 1e-9)
    if hi <= warmup:
        assert a <= b + 1e-12  # warmup rises
    if lo >= warmup:
        assert b <= a + 1e-12  # decay falls
        assert b >= peak * min_ratio - 1e-12
    assert math.isclose(learning_rate(1.0, peak, warmup, min_ratio), peak * min_ratio, rel_tol=1e-9, abs_tol=1e-15)
