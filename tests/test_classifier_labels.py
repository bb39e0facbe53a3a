"""Weak label spans -> token labels, training windows, upsampling, calibration: pure functions."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tokfilter.training.classifier.train import (
    DOC_LOSS_WEIGHT,
    IGNORE,
    build_model,
    calibrate_thresholds,
    encoder_path,
    flip_token_labels,
    make_windows,
    sample_docs,
    encode_documents,
    token_labels_from_spans,
    training_loss,
    training_windows,
    upsample_positive_windows,
    window_is_positive,
)
from tokfilter.windows import WindowSequences, load_tokenizer, pad_batch


def test_labels_on_hand_made_sentence():
    tokenizer = load_tokenizer(encoder_path() / "tokenizer.json")
    text = "Rain fell. Myocardial infarction hurts. Birds sing."
    start = text.index("Myocardial")
    end = start + len("Myocardial infarction")
    enc = tokenizer.encode(text, add_special_tokens=False)
    labels = token_labels_from_spans(np.array(enc.offsets), [(start, end)])
    flagged = "".join(t.replace("##", "") for t, lab in zip(enc.tokens, labels) if lab)
    assert flagged == "myocardialinfarction"
    assert labels.sum() == sum(1 for s, e in enc.offsets if s < end and e > start)


def test_partial_overlap_counts_as_positive():
    offsets = np.array([[0, 4], [4, 8], [9, 12]])
    # the span covers only the last character of token 0 and the first of token 1
    assert token_labels_from_spans(offsets, [(3, 5)]).tolist() == [1, 1, 0]
    # touching a token's end (half-open) is no overlap
    assert token_labels_from_spans(offsets, [(8, 9)]).tolist() == [0, 0, 0]
    assert token_labels_from_spans(offsets, []).tolist() == [0, 0, 0]


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 40), st.integers(0, 6)), max_size=20),
    st.lists(st.tuples(st.integers(0, 40), st.integers(1, 8)), max_size=4),
)
def test_labels_match_character_overlap(tokens, spans):
    offsets = np.array([(s, s + n) for s, n in tokens], dtype=np.int64).reshape(-1, 2)
    spans = [(s, s + n) for s, n in spans]
    covered = set()
    for s, e in spans:
        covered.update(range(s, e))
    expected = [int(any(c in covered for c in range(s, e))) for s, e in offsets]
    assert token_labels_from_spans(offsets, spans).tolist() == expected


def test_windows_keep_labels_aligned_with_tokens():
    tokenizer = load_tokenizer(encoder_path() / "tokenizer.json")
    cls_id, sep_id = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    sequences = WindowSequences.for_tokenizer(tokenizer, max_length=24, stride=6)
    benign = "The river flows past the mill and the town. " * 6
    medical = "Acute appendicitis requires appendectomy. "
    text = benign + medical + benign
    start = len(benign)
    doc = {"text": text, "meta": {"label_spans": [[start, start + len(medical) - 1]],
                                  "passages": [{"start": start, "end": start + len(medical), "domain": "medicine"}]}}
    encoded = encode_documents(tokenizer, [doc])
    windows = make_windows(encoded, "token", sequences)
    assert len(windows) > 3
    for ids, labels in windows:
        assert len(ids) == len(labels) <= 24
        assert ids[0] == cls_id and ids[-1] == sep_id and labels[0] == labels[-1] == IGNORE
    positive_tokens = {int(i) for ids, labels in windows for i, lab in zip(ids, labels) if lab == 1}
    assert positive_tokens == set(tokenizer.encode(medical.strip(), add_special_tokens=False).ids)
    doc_windows = make_windows(encoded, "document", sequences)
    assert 0 < sum(int(lab) for _, lab in doc_windows) < len(doc_windows)
    joint_windows = make_windows(encoded, "joint", sequences)  # the same windows, each with both labels
    assert len(joint_windows) == len(windows) == len(doc_windows)
    for (ids, (token_labels, window_label)), (t_ids, t_labels), (d_ids, d_label) in zip(joint_windows, windows, doc_windows):
        assert np.array_equal(ids, t_ids) and np.array_equal(ids, d_ids)
        assert np.array_equal(token_labels, t_labels) and window_label == d_label
        assert window_is_positive((token_labels, window_label)) == (window_is_positive(t_labels) or window_is_positive(d_label))


def test_a_corpus_read_n_times_is_windowed_once_and_listed_n_times():
    """`--corpus DIR:N` repeats the same documents: the windows are those of the documents one by one,
    in order, and a repeated document's windows are the very same objects, not copies."""
    tokenizer = load_tokenizer(encoder_path() / "tokenizer.json")
    sequences = WindowSequences.for_tokenizer(tokenizer, max_length=24, stride=6)
    base = {"text": "The river flows past the mill and the town. " * 4, "meta": {}}
    own = {"text": "Acute appendicitis requires appendectomy. The river is cold. " * 3,
           "meta": {"label_spans": [[0, 40]], "passages": [{"start": 0, "end": 41, "domain": "medicine"}]}}
    docs = [base] + [own] * 3
    windows = training_windows(tokenizer, docs, "joint", sequences)
    expected = make_windows(encode_documents(tokenizer, docs), "joint", sequences)
    assert len(windows) == len(expected)
    for (ids, (labels, label)), (e_ids, (e_labels, e_label)) in zip(windows, expected):
        assert np.array_equal(ids, e_ids) and np.array_equal(labels, e_labels) and label == e_label
    n_own = len(make_windows(encode_documents(tokenizer, [own]), "joint", sequences))
    n_base = len(windows) - 3 * n_own
    assert all(windows[n_base + i] is windows[n_base + n_own + i] is windows[n_base + 2 * n_own + i] for i in range(n_own))


def test_joint_loss_is_token_loss_plus_weighted_window_loss():
    import torch

    tokenizer = load_tokenizer(encoder_path() / "tokenizer.json")
    sequences = WindowSequences.for_tokenizer(tokenizer, max_length=24, stride=6)
    doc = {"text": "Rain fell on the hills. Acute appendicitis requires appendectomy. " * 3,
           "meta": {"label_spans": [[24, 64]], "passages": [{"start": 24, "end": 66, "domain": "medicine"}]}}
    windows = make_windows(encode_documents(tokenizer, [doc]), "joint", sequences)
    model = build_model("joint", layers=1, seed=0).eval()  # eval: no dropout, so two forwards agree
    batch = np.arange(len(windows))
    rng = np.random.default_rng(0)
    loss = training_loss(model, windows, batch, "joint", 0.0, rng).item()
    ids, mask = pad_batch([w[0] for w in windows])
    token_logits, doc_logits = model(torch.from_numpy(ids), torch.from_numpy(mask))
    labels = torch.full(ids.shape, IGNORE, dtype=torch.int64)
    for row, (_, (token_labels, _)) in enumerate(windows):
        labels[row, : len(token_labels)] = torch.from_numpy(token_labels)
    ce = torch.nn.functional.cross_entropy
    expected = ce(token_logits.reshape(-1, 2), labels.reshape(-1), ignore_index=IGNORE) + DOC_LOSS_WEIGHT * ce(
        doc_logits, torch.tensor([w[1][1] for w in windows]))
    assert loss == pytest.approx(expected.item(), rel=1e-5)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.booleans(), min_size=2, max_size=50), st.integers(1, 400), st.integers(0, 2**16))
def test_upsampling_gives_half_positive_windows(positives, n, seed):
    positives = np.array(positives)
    idx = upsample_positive_windows(n, positives, 0.5, np.random.default_rng(seed))
    assert len(idx) == n
    if positives.any() and (~positives).any():
        assert positives[idx].sum() == round(n * 0.5)


def test_label_noise_flips_about_p_and_keeps_ignored():
    labels = np.zeros((200, 50), dtype=np.int64)
    labels[:, 0] = IGNORE
    flipped = flip_token_labels(labels, 0.2, np.random.default_rng(0))
    assert (flipped[:, 0] == IGNORE).all()
    assert 0.18 < flipped[:, 1:].mean() < 0.22
    assert flip_token_labels(labels, 0.0, np.random.default_rng(0)) is labels


def test_calibration_thresholds_on_hand_made_scores():
    labels = np.array([0, 0, 0, 1, 1, 1, 1, 1])
    scores = np.array([0.1, 0.2, 0.7, 0.3, 0.6, 0.8, 0.9, 0.95])
    best, recall95 = calibrate_thresholds(labels, scores)
    # at 0.6: tp 4, fp 1 -> F1 0.8; at 0.3: tp 5, fp 1 -> F1 0.909 (best, recall 1.0)
    assert best == 0.3
    assert recall95 == 0.3
    # 5 negatives sit just above the lowest positive: the best-F1 threshold leaves out 2 positives,
    # the recall-0.95 threshold keeps 19 of 20 and lets the 5 negatives in
    positives = np.linspace(0.3, 1.0, 20)
    scores = np.concatenate([np.full(10, 0.05), np.full(5, 0.35), positives])
    labels = np.array([0] * 15 + [1] * 20)
    best, recall95 = calibrate_thresholds(labels, scores)
    assert best == positives[2]
    assert recall95 == positives[1]


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 60), st.one_of(st.none(), st.integers(1, 80)), st.integers(0, 100))
def test_sample_docs_is_a_seeded_ordered_subset(n, max_docs, seed):
    docs = [{"id": str(i)} for i in range(n)]
    sample = sample_docs(docs, max_docs, seed)
    assert len(sample) == (n if max_docs is None else min(n, max_docs))
    positions = [int(d["id"]) for d in sample]
    assert positions == sorted(set(positions))
    assert sample == sample_docs(docs, max_docs, seed)
