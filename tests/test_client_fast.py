"""The batched client steps (numpy over a buffer's flat arrays) give exactly what their reference
forms (today's one-document, one-window-at-a-time code) give."""

import base64
import string
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tokfilter.clients.projection import TargetTokenizer, TargetEncoding, project_batch, reference_project_batch
from tokfilter.piece_cache import PieceCachedEncoder, encode_batch_arrays, piece_pattern
from tokfilter.scoring import (
    ScoredModel,
    ScoringPipeline,
    plan_batches,
    reference_encode_texts,
    reference_plan_batches,
    reference_score,
    reference_score_windows,
)
from tokfilter.training.classifier.train import encoder_path
from tokfilter.training.pretrain.tokenizer import train_target_tokenizer
from tokfilter.windows import (
    Window,
    char_probabilities,
    char_probabilities_batch,
    load_tokenizer,
    pad_batch,
    plan_windows,
    plan_windows_batch,
    reference_pad_batch,
    reference_spans_from_char_probs,
    spans_batch,
    spans_from_char_probs,
)

TEXT = st.text(alphabet=st.characters(codec="utf-8") | st.sampled_from(["é", "😀", "\u0301", "\ud800", " ", "\n"]), max_size=80)
WORDS = st.lists(st.sampled_from(["cell", "the", "insulin", "dose", "é", "🧬", "tumour", "\u200b", "  ", "\n", "a.b",
                                  "Hypercholesterolaemia", "naïve", "İstanbul"]), max_size=150).map(" ".join)
PROBS = st.floats(0, 1, width=32)
SHARED_MACHINE = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow], max_examples=60)


@st.composite
def documents(draw, max_docs=6):
    """Per document: a character count and tokens (start, end, prob) inside it, overlapping or empty at times."""
    docs = []
    for _ in range(draw(st.integers(0, max_docs))):
        n_chars = draw(st.integers(0, 40))
        pos = st.integers(0, n_chars)
        tokens = draw(st.lists(st.tuples(pos, pos, PROBS), max_size=12))
        docs.append((n_chars, [(min(a, b), max(a, b), p) for a, b, p in tokens]))
    return docs


def flat(docs):
    offsets = np.array([[s, e] for _, toks in docs for s, e, _ in toks], dtype=np.int64).reshape(-1, 2)
    probs = np.array([p for _, toks in docs for _, _, p in toks], dtype=np.float32)
    return offsets, probs, np.array([len(t) for _, t in docs], dtype=np.int64), np.array([n for n, _ in docs], dtype=np.int64)


@SHARED_MACHINE
@given(st.lists(st.lists(st.integers(0, 30000), max_size=20), max_size=8))
def test_pad_batch_equals_reference(sequences):
    sequences = [np.array(s, dtype=np.int64) for s in sequences]
    for got, want in zip(pad_batch(sequences), reference_pad_batch(sequences)):
        np.testing.assert_array_equal(got, want)
        assert got.dtype == want.dtype and got.shape == want.shape


@SHARED_MACHINE
@given(st.lists(st.integers(1, 300), max_size=60), st.integers(1, 2000), st.integers(1, 16))
def test_plan_batches_equals_reference(lengths, budget, max_size):
    assert plan_batches(lengths, budget, max_size) == reference_plan_batches(lengths, budget, max_size)


@SHARED_MACHINE
@given(st.lists(st.integers(0, 400), max_size=8), st.integers(1, 64), st.data())
def test_plan_windows_batch_equals_reference(n_tokens, max_content, data):
    stride = data.draw(st.integers(0, max_content - 1))
    plan = plan_windows_batch(np.array(n_tokens, dtype=np.int64), max_content, stride)
    got = [(d, Window(*w)) for d, *w in zip(*(a.tolist() for a in (plan.doc, plan.start, plan.end, plan.keep_start, plan.keep_end)))]
    assert got == [(d, w) for d, n in enumerate(n_tokens) for w in plan_windows(n, max_content, stride)]


@SHARED_MACHINE
@given(documents())
def test_char_probabilities_batch_equals_reference(docs):
    offsets, probs, token_counts, char_counts = flat(docs)
    got = char_probabilities_batch(offsets, probs, token_counts, char_counts)
    want = [char_probabilities(np.array([[s, e] for s, e, _ in toks]), np.array([p for *_, p in toks]), n) for n, toks in docs]
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, np.concatenate([np.zeros(0, np.float32), *want]))


@SHARED_MACHINE
@given(st.lists(st.lists(PROBS, max_size=30), max_size=6), PROBS)
def test_spans_equal_reference(docs, threshold):
    arrays = [np.array(d, dtype=np.float32) for d in docs]
    want = [reference_spans_from_char_probs(a, threshold) for a in arrays]
    assert [spans_from_char_probs(a, threshold) for a in arrays] == want
    flat_probs = np.concatenate([np.zeros(0, np.float32), *arrays])
    assert spans_batch(flat_probs, np.array([len(a) for a in arrays]), threshold) == want


@SHARED_MACHINE
@given(documents())
def test_project_batch_equals_reference(docs):
    rng = np.random.default_rng(len(docs))
    char_probs = [rng.random(n).astype(np.float32) for n, _ in docs]
    encodings = [TargetEncoding(np.arange(len(t)), np.array([s for s, _, _ in t], dtype=np.int64),
                                np.array([e for _, e, _ in t], dtype=np.int64)) for _, t in docs]
    got, want = project_batch(char_probs, encodings), reference_project_batch(char_probs, encodings)
    assert len(got) == len(want)
    for a, b in zip(got, want):
        np.testing.assert_array_equal(a, b)
        assert a.dtype == b.dtype


@pytest.fixture(scope="module")
def targets(tmp_path_factory):
    texts = ["The patient was given insulin for diabetes.", "naïve café — 😀 emoji and ünïcödé text", "  tabs\tand\n\nlines  "] * 20
    hf = TargetTokenizer(train_target_tokenizer(texts, tmp_path_factory.mktemp("tok") / "tokenizer.json", vocab_size=320))
    merges = [bytes([b]) for b in range(256)] + [b"th", b"the", b" the", b"in", b"ing", b"\xc3\xa9", b" \xf0\x9f"]
    path = tmp_path_factory.mktemp("tt") / "tiny.tiktoken"
    path.write_text("".join(f"{base64.b64encode(m).decode()} {r}\n" for r, m in enumerate(merges)))
    return {"hf": hf, "tiktoken": TargetTokenizer(path)}


@pytest.mark.parametrize("kind", ["hf", "tiktoken"])
@settings(max_examples=40, deadline=None)
@given(texts=st.lists(TEXT, max_size=5))
def test_target_encode_equals_reference(targets, kind, texts):
    tok = targets[kind]
    got, want = tok.encode(texts), tok.reference_encode(texts)
    assert len(got) == len(want) == len(texts)
    for a, b in zip(got, want):
        for field in ("ids", "starts", "ends"):
            np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
            assert getattr(a, field).dtype == getattr(b, field).dtype


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(encoder_path() / "tokenizer.json")


def token_scorer(input_ids, attention_mask):
    """Depends on the position too, so a token scored by the wrong window or column shows."""
    return ((input_ids * 31 + np.arange(input_ids.shape[1])) % 101 / 100.0).astype(np.float32) * attention_mask


def doc_scorer(input_ids, attention_mask):
    return ((input_ids * attention_mask).sum(axis=1) % 97 / 96.0).astype(np.float32)


def assert_same_scores(got, want):
    assert len(got) == len(want)
    for a, b in zip(got, want):
        assert a.doc_score == b.doc_score and a.spans == b.spans and a.threshold == b.threshold
        for field in ("token_ids", "offsets", "token_probs", "char_probs"):
            np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
            assert getattr(a, field).dtype == getattr(b, field).dtype


@settings(max_examples=40, deadline=None)
@given(texts=st.lists(WORDS | TEXT, max_size=6), max_length=st.integers(3, 40), stride=st.integers(0, 40),
       budget=st.integers(1, 400), max_size=st.integers(1, 8), threshold=PROBS, pooled=st.booleans())
def test_pipeline_scores_equal_reference(tokenizer, texts, max_length, stride, budget, max_size, threshold, pooled):
    """Tokenize, window, batch, score, stitch, characters, spans: the batched pipeline and the
    reference agree exactly, whatever the windowing, budget and concurrency."""
    with ThreadPoolExecutor(3) as pool:
        pipeline = ScoringPipeline(tokenizer, ScoredModel(token_scorer, max_length, stride), 0.5,
                                   ScoredModel(doc_scorer, max_length, stride // 2), max_batch_tokens=budget,
                                   max_batch_size=max_size, executor=pool if pooled else None)
        assert_same_scores(pipeline.score(texts, threshold), reference_score(pipeline, texts, threshold))
        docs = reference_score_windows(pipeline, pipeline.doc_model, reference_encode_texts(tokenizer, texts), per_token=False)
        np.testing.assert_array_equal(pipeline.score_documents(texts), np.array([max(s.doc_probs) for s in docs], dtype=np.float32))


def joint_scorer(input_ids, attention_mask):
    """Both heads from one call, as a joint model's scorer gives them."""
    return token_scorer(input_ids, attention_mask), doc_scorer(input_ids, attention_mask)


@settings(max_examples=30, deadline=None)
@given(texts=st.lists(WORDS | TEXT, max_size=6), max_length=st.integers(3, 40), stride=st.integers(0, 40),
       budget=st.integers(1, 400), max_size=st.integers(1, 8), pooled=st.booleans())
def test_joint_pipeline_scores_equal_reference(tokenizer, texts, max_length, stride, budget, max_size, pooled):
    """A joint model: token and document scores from one call per batch, as the reference gives them."""
    calls = []

    def counted(input_ids, attention_mask):
        calls.append(input_ids.shape[0])
        return joint_scorer(input_ids, attention_mask)

    with ThreadPoolExecutor(3) as pool:
        pipeline = ScoringPipeline(tokenizer, ScoredModel(counted, max_length, stride, joint=True), 0.5, max_batch_tokens=budget,
                                   max_batch_size=max_size, executor=pool if pooled else None)
        got = pipeline.score(texts)
        scored_windows = sum(calls)
        docs = reference_score_windows(pipeline, pipeline.token_model, reference_encode_texts(tokenizer, texts), per_token=False)
        assert scored_windows == sum(len(s.windows) for s in docs)  # each window scored once for both heads
        assert_same_scores(got, reference_score(pipeline, texts))
        assert all(s.doc_score is not None for s in got)
        np.testing.assert_array_equal(pipeline.score_documents(texts), np.array([max(s.doc_probs) for s in docs], dtype=np.float32))


def test_long_documents_equal_reference(tokenizer):
    texts = ["Insulin lowers blood glucose in the patient. " * 400, "", "A cell divides.", "naïve 😀 " * 300]
    pipeline = ScoringPipeline(tokenizer, ScoredModel(token_scorer, 256, 64), 0.5, ScoredModel(doc_scorer, 128, 16))
    assert_same_scores(pipeline.score(texts), reference_score(pipeline, texts))


ASCII_TEXT = st.text(alphabet=st.sampled_from(string.printable), max_size=80) | st.lists(st.sampled_from(
    ["don't", "'s", "'ll", "I'M", " ", "  ", "\n", "\t", "\r\n", "[CLS]", "[cls]", "<|endoftext|>", "[hidden]", "a" * 120,
     "Insulin", "x1", "3.5mg", "é", "😀", "\x00", "\x1c"]), max_size=30).map("".join)


@pytest.fixture(scope="module")
def piece_encoders(tokenizer, targets):
    return {"bert": PieceCachedEncoder(tokenizer), "byte_level_bpe": PieceCachedEncoder(targets["hf"]._hf)}


@pytest.mark.parametrize("kind", ["bert", "byte_level_bpe"])
@settings(max_examples=80, deadline=None)
@given(texts=st.lists(ASCII_TEXT | TEXT, max_size=6))
def test_piece_cache_equals_encode_batch(piece_encoders, kind, texts):
    """Ids and offsets from cached pieces equal the library's, on ASCII text (cached), on any other
    text and on text holding a special token's text (the library's own path)."""
    encoder = piece_encoders[kind]
    assert encoder.pieces is not None
    for got, want in zip(encoder.encode(texts), encode_batch_arrays(encoder.tokenizer, texts)):
        np.testing.assert_array_equal(got, want)
        assert got.dtype == want.dtype and got.shape == want.shape


def test_piece_cache_is_bounded_and_other_configurations_use_the_library(tokenizer, monkeypatch):
    from tokenizers import pre_tokenizers

    texts = [f"dose {i} of insulin, twice a day" for i in range(40)]
    encoder = PieceCachedEncoder(tokenizer)
    monkeypatch.setattr("tokfilter.piece_cache.MAX_CACHED_PIECES", 8)
    for lo in range(0, 40, 10):
        for got, want in zip(encoder.encode(texts[lo : lo + 10]), encode_batch_arrays(tokenizer, texts[lo : lo + 10])):
            np.testing.assert_array_equal(got, want)
        assert len(encoder.index) <= 8 + 16
    other = load_tokenizer(encoder_path() / "tokenizer.json")
    other.pre_tokenizer = pre_tokenizers.Whitespace()
    assert piece_pattern(other) is None
    for got, want in zip(PieceCachedEncoder(other).encode(texts), encode_batch_arrays(other, texts)):
        np.testing.assert_array_equal(got, want)
