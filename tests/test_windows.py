"""Property tests of the shared windowing, stitching and character-probability rules."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tokfilter.windows import (
    char_probabilities,
    pad_batch,
    plan_windows,
    spans_from_char_probs,
    stitch_window_scores,
)


@st.composite
def window_plans(draw):
    max_content = draw(st.integers(1, 64))
    stride = draw(st.integers(0, max_content - 1))
    n_tokens = draw(st.integers(0, 500))
    return n_tokens, max_content, stride


@given(window_plans())
def test_windows_cover_every_token_once_within_size(plan):
    n_tokens, max_content, stride = plan
    windows = plan_windows(n_tokens, max_content, stride)
    kept = np.zeros(n_tokens, dtype=int)
    for w in windows:
        assert 0 <= w.start <= w.keep_start <= w.keep_end <= w.end <= n_tokens
        assert w.end - w.start <= max_content
        kept[w.keep_start : w.keep_end] += 1
    assert (kept == 1).all()
    assert windows[0].start == 0 and windows[-1].end == n_tokens


@given(window_plans())
def test_consecutive_windows_overlap_by_at_least_stride(plan):
    n_tokens, max_content, stride = plan
    windows = plan_windows(n_tokens, max_content, stride)
    for a, b in zip(windows, windows[1:]):
        assert a.end - b.start >= stride


def test_overlap_split_at_midpoint():
    windows = plan_windows(10, 4, 2)
    # windows [0,4) [2,6) [4,8) [6,10); each overlap of 2 tokens is split in the middle
    assert [(w.start, w.end) for w in windows] == [(0, 4), (2, 6), (4, 8), (6, 10)]
    assert [(w.keep_start, w.keep_end) for w in windows] == [(0, 3), (3, 5), (5, 7), (7, 10)]


@given(window_plans(), st.randoms(use_true_random=False))
def test_stitching_recovers_a_position_independent_score(plan, rnd):
    n_tokens, max_content, stride = plan
    truth = np.array([rnd.random() for _ in range(n_tokens)], dtype=np.float32)
    windows = plan_windows(n_tokens, max_content, stride)
    stitched = stitch_window_scores(n_tokens, windows, [truth[w.start : w.end] for w in windows])
    np.testing.assert_array_equal(stitched, truth)


def test_bad_window_parameters_are_rejected():
    with pytest.raises(ValueError, match="stride"):
        plan_windows(10, 4, 4)
    with pytest.raises(ValueError, match="max_content"):
        plan_windows(10, 0, 0)


@st.composite
def tokenized_texts(draw):
    """Random non-overlapping token offsets over a text, with probabilities."""
    n_chars = draw(st.integers(0, 80))
    cuts = sorted(draw(st.lists(st.integers(0, n_chars), max_size=30)))
    offsets = [(a, b) for a, b in zip(cuts[::2], cuts[1::2]) if b > a]
    probs = draw(st.lists(st.floats(0, 1, width=32), min_size=len(offsets), max_size=len(offsets)))
    return n_chars, np.array(offsets, dtype=np.int64).reshape(-1, 2), np.array(probs, dtype=np.float32)


@given(tokenized_texts())
def test_every_character_gets_a_probability_in_range(sample):
    n_chars, offsets, probs = sample
    cp = char_probabilities(offsets, probs, n_chars)
    assert cp.shape == (n_chars,)
    assert ((cp >= 0) & (cp <= 1)).all()
    for (s, e), p in zip(offsets, probs):
        assert (cp[s:e] == p).all()


@given(tokenized_texts(), st.floats(0, 1), st.floats(0, 1))
@settings(max_examples=200)
def test_higher_threshold_never_flags_more(sample, t1, t2):
    n_chars, offsets, probs = sample
    cp = char_probabilities(offsets, probs, n_chars)
    lo, hi = sorted((t1, t2))
    flagged_lo = sum(s.end - s.start for s in spans_from_char_probs(cp, lo))
    flagged_hi = sum(s.end - s.start for s in spans_from_char_probs(cp, hi))
    assert flagged_hi <= flagged_lo


@given(tokenized_texts(), st.floats(0.01, 1))
def test_spans_start_and_end_on_flagged_tokens(sample, threshold):
    n_chars, offsets, probs = sample
    cp = char_probabilities(offsets, probs, n_chars)
    flagged = probs >= np.float32(threshold)
    starts = {int(s) for (s, _), f in zip(offsets, flagged) if f}
    ends = {int(e) for (_, e), f in zip(offsets, flagged) if f}
    for span in spans_from_char_probs(cp, threshold):
        assert span.start in starts and span.end in ends
        assert span.score == pytest.approx(float(cp[span.start : span.end].max()))


def test_gap_between_flagged_words_is_flagged_but_not_beside_benign_ones():
    # "aspirin dose of tea": tokens at [0,7) [8,12) [13,15) [16,19)
    offsets = np.array([[0, 7], [8, 12], [13, 15], [16, 19]])
    cp = char_probabilities(offsets, np.array([0.9, 0.8, 0.1, 0.0]), 20)
    spans = spans_from_char_probs(cp, 0.5)
    assert [(s.start, s.end) for s in spans] == [(0, 12)]
    assert spans[0].score == pytest.approx(0.9)
    assert cp[19] == 0.0  # after the last token


def test_pad_batch():
    ids, mask = pad_batch([np.array([5, 6, 7]), np.array([8])])
    assert ids.tolist() == [[5, 6, 7], [8, 0, 0]] and mask.tolist() == [[1, 1, 1], [1, 0, 0]]
    assert ids.dtype == np.int64
