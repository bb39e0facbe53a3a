"""The shared document-scoring pipeline: batching, windowing and stitching through any scorer."""

import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tokfilter.errors import TokfilterError
from tokfilter.inference import OnnxWindowScorer
from tokfilter.scoring import (
    ScoredModel,
    ScoringPipeline,
    hide_spans,
    plan_batches,
    safe_text,
    score_window_requests,
)
from tokfilter.windows import Span, load_tokenizer


@given(
    st.lists(st.integers(1, 300), max_size=60),
    st.integers(1, 2000),
    st.integers(1, 16),
)
def test_batches_hold_every_item_once_within_budget(lengths, budget, max_size):
    batches = plan_batches(lengths, budget, max_size)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    for batch in batches:
        assert len(batch) <= max_size
        width = max(lengths[i] for i in batch)
        assert len(batch) == 1 or len(batch) * width <= budget


@given(st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=0x10FFFF), max_size=50))
def test_safe_text_keeps_length_and_encodes(text):
    clean = safe_text(text)
    assert len(clean) == len(text)
    clean.encode("utf-8")


@given(st.text(max_size=40), st.data())
def test_hide_spans_replaces_exactly_the_spans(text, data):
    cuts = sorted(set(data.draw(st.lists(st.integers(0, len(text)), max_size=6))))
    spans = [Span(a, b, 1.0) for a, b in zip(cuts[::2], cuts[1::2])]
    hidden = hide_spans(text, spans)
    kept = sum(s.end - s.start for s in spans)
    assert len(hidden) == len(text) - kept + len(spans) * len("[hidden]")
    if not spans:
        assert hidden == text


def id_scorer(input_ids, attention_mask):
    """A scorer whose token probability depends on the token id only: stitching must preserve it."""
    return ((input_ids * 7919) % 1000 / 1000.0).astype(np.float32) * attention_mask


def first_token_doc_scorer(input_ids, attention_mask):
    return (input_ids[:, 1] % 100 / 100.0).astype(np.float32)


@pytest.fixture(scope="module")
def tokenizer(tiny_models_dir):
    return load_tokenizer(tiny_models_dir / "token_classifier" / "tokenizer.json")


words = st.sampled_from(["cell", "the", "insulin", "dose", "é", "🧬", "tumour", "\u200b", "  ", "\n", "a.b"])
documents = st.lists(st.lists(words, max_size=120).map(" ".join), min_size=1, max_size=5)


@settings(max_examples=30, deadline=None)
@given(documents, st.integers(8, 40), st.integers(16, 512))
def test_windowed_scores_equal_unwindowed_for_position_free_scorer(tokenizer, texts, max_length, budget):
    pipeline = ScoringPipeline(
        tokenizer,
        ScoredModel(id_scorer, max_length, max_length // 3),
        0.5,
        doc_model=ScoredModel(first_token_doc_scorer, max_length, 0),
        max_batch_tokens=budget,
    )
    results = pipeline.score(texts)
    for text, res in zip(texts, results):
        expected = id_scorer(res.token_ids[None], np.ones((1, len(res.token_ids)), dtype=np.int64))[0]
        np.testing.assert_array_equal(res.token_probs, expected)
        assert res.char_probs.shape == (len(text),)
        assert res.offsets.shape == (len(res.token_ids), 2)
        assert all(0 <= s.start < s.end <= len(text) for s in res.spans)
        assert 0.0 <= res.doc_score <= 1.0


def joint_scorer(input_ids, attention_mask):
    """A joint scorer made of the two position-free scorers above: one call, both outputs."""
    return id_scorer(input_ids, attention_mask), first_token_doc_scorer(input_ids, attention_mask)


@settings(max_examples=30, deadline=None)
@given(documents, st.integers(8, 40), st.integers(16, 512))
def test_joint_model_scores_as_the_two_models_it_combines(tokenizer, texts, max_length, budget):
    """One joint call per window batch gives the token scores of its token part and the document
    score (max over windows) of its document part, on the joint model's windows."""
    stride = max_length // 3
    calls = []

    def counted_joint_scorer(ids, mask):
        calls.append(ids.shape)
        return joint_scorer(ids, mask)

    joint = ScoringPipeline(tokenizer, ScoredModel(counted_joint_scorer, max_length, stride, joint=True), 0.5, max_batch_tokens=budget)
    pair = ScoringPipeline(tokenizer, ScoredModel(id_scorer, max_length, stride), 0.5,
                           doc_model=ScoredModel(first_token_doc_scorer, max_length, stride), max_batch_tokens=budget)
    for a, b in zip(joint.score(texts), pair.score(texts)):
        np.testing.assert_array_equal(a.token_probs, b.token_probs)
        assert a.doc_score == b.doc_score and a.spans == b.spans
    n_calls = len(calls)
    np.testing.assert_array_equal(joint.score_documents(texts), pair.score_documents(texts))
    assert len(calls) == 2 * n_calls and joint.scores_documents


def test_joint_model_takes_no_separate_document_model(tiny_joint_model_dir, tiny_models_dir, tokenizer):
    """From directories, a joint token model scores documents with its own head (the document
    model directory is unused); given both models in code, the pipeline refuses the conflict."""
    pipeline = ScoringPipeline.from_model_dirs(tiny_joint_model_dir, tiny_models_dir / "doc_classifier")
    assert pipeline.token_model.joint and pipeline.doc_model is None
    with pytest.raises(TokfilterError, match="joint model"):
        ScoringPipeline(tokenizer, ScoredModel(joint_scorer, 32, 8, joint=True), 0.5,
                        doc_model=ScoredModel(first_token_doc_scorer, 32, 8))


def test_exported_joint_model_scores_both_heads_in_one_call(tiny_joint_model_dir):
    """From its directory, the joint export gives token and document scores; a document that fits
    one window gets exactly that window's two outputs of one ONNX Runtime call."""
    pipeline = ScoringPipeline.from_model_dirs(tiny_joint_model_dir)
    assert pipeline.token_model.joint and pipeline.doc_model is None
    text = "The patient received insulin for diabetes while the cell divided."
    (result,) = pipeline.score([text])
    ids = np.asarray([pipeline.tokenizer.encode(text).ids], dtype=np.int64)
    token_probs, doc_probs = OnnxWindowScorer(tiny_joint_model_dir)(ids, np.ones_like(ids))
    np.testing.assert_allclose(result.token_probs, token_probs[0, 1:-1], atol=1e-5)
    assert result.doc_score == pytest.approx(float(doc_probs[0]), abs=1e-5)
    long = pipeline.score(["Insulin lowers blood glucose. " * 40])[0]
    assert len(long.token_ids) > 64 and 0 <= long.doc_score <= 1  # several windows


def test_onnx_scores_do_not_depend_on_batching_or_concurrency(tiny_models_dir):
    texts = ["", "Insulin lowers blood glucose. " * 80, "A cell divides.", "\ud800 odd \u0000 text 🧬"]
    serial = ScoringPipeline.from_model_dirs(
        tiny_models_dir / "token_classifier", tiny_models_dir / "doc_classifier", max_batch_tokens=1
    ).score(texts)
    with ThreadPoolExecutor(4) as pool:
        batched = ScoringPipeline.from_model_dirs(
            tiny_models_dir / "token_classifier", tiny_models_dir / "doc_classifier",
            max_batch_tokens=4096, executor=pool,
        ).score(texts)
    for a, b, text in zip(serial, batched, texts):
        np.testing.assert_allclose(a.token_probs, b.token_probs, atol=1e-5)
        assert a.doc_score == pytest.approx(b.doc_score, abs=1e-5)
        assert len(a.char_probs) == len(text)
    assert len(serial[1].token_ids) > 128  # long enough to need several windows
    assert serial[0].token_probs.size == 0 and serial[0].flagged_fraction == 0.0


def test_whole_document_matches_a_single_onnx_call_when_it_fits(tiny_models_dir):
    model_dir = tiny_models_dir / "token_classifier"
    pipeline = ScoringPipeline.from_model_dirs(model_dir)
    text = "The patient received insulin for diabetes while the cell divided."
    (result,) = pipeline.score([text])
    enc = pipeline.tokenizer.encode(text)
    ids = np.asarray([enc.ids], dtype=np.int64)
    direct = OnnxWindowScorer(model_dir)(ids, np.ones_like(ids))[0, 1:-1]
    np.testing.assert_allclose(result.token_probs, direct, atol=1e-5)


def _onnxruntime_has_cuda() -> bool:
    import onnxruntime as ort

    return "CUDAExecutionProvider" in ort.get_available_providers()


@pytest.mark.skipif(_onnxruntime_has_cuda(), reason="this onnxruntime has the CUDA provider")
def test_cuda_scorer_without_onnxruntime_gpu_is_a_clear_error(tiny_models_dir):
    with pytest.raises(TokfilterError, match="no CUDA provider: this is the CPU build.*pip install '\\.\\[gpu\\]'"):
        OnnxWindowScorer(tiny_models_dir / "token_classifier", device="cuda")


@pytest.mark.skipif(_onnxruntime_has_cuda(), reason="this onnxruntime has the CUDA provider")
def test_served_device_warns_when_onnxruntime_gpu_has_no_cuda_provider(monkeypatch):
    import tokfilter.inference as inference

    monkeypatch.delenv("TOKFILTER_DEVICE", raising=False)
    monkeypatch.setattr(inference, "_installed", lambda distribution: True)  # both builds, as pip can leave them
    with pytest.warns(RuntimeWarning, match="both installed, and the CPU one hides the CUDA provider"):
        assert inference.served_device() == "cpu"


def test_missing_onnxruntime_is_a_clear_error(tiny_models_dir, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # what an install without the cpu/gpu extra sees
    with pytest.raises(TokfilterError, match="ONNX Runtime is not installed.*'\\.\\[cpu\\]'"):
        OnnxWindowScorer(tiny_models_dir / "token_classifier")


@pytest.mark.cuda
@pytest.mark.skipif(not _onnxruntime_has_cuda(), reason="needs onnxruntime-gpu (the CUDA provider)")
def test_cuda_scores_equal_cpu_scores(tiny_models_dir):
    model_dir = tiny_models_dir / "token_classifier"
    ids = np.random.default_rng(0).integers(5, 500, (3, 40))
    mask = np.ones_like(ids)
    mask[1, 25:] = 0
    cuda = OnnxWindowScorer(model_dir, device="cuda")
    assert cuda.session.get_providers()[0] == "CUDAExecutionProvider"
    np.testing.assert_allclose(cuda(ids, mask)[mask == 1], OnnxWindowScorer(model_dir)(ids, mask)[mask == 1], atol=1e-4)


def test_one_scorer_called_from_many_threads_runs_one_batch_at_a_time(tiny_models_dir):
    """Concurrent callers get the serial results, and the session never runs two batches at once
    (concurrent runs multiply activation memory without adding speed)."""
    import threading
    import time

    scorer = OnnxWindowScorer(tiny_models_dir / "token_classifier")
    session, active, most = scorer.session, [0], [0]
    lock = threading.Lock()

    class CountingSession:  # the real session, with a count of runs in progress
        def run(self, *args, **kwargs):
            with lock:
                active[0] += 1
                most[0] = max(most[0], active[0])
            try:
                time.sleep(0.01)  # widen the window in which an overlap would show
                return session.run(*args, **kwargs)
            finally:
                with lock:
                    active[0] -= 1

    rng = np.random.default_rng(0)
    batches = [(rng.integers(1000, 2000, (3, 20)), np.ones((3, 20), dtype=np.int64)) for _ in range(12)]
    serial = [scorer(ids, mask) for ids, mask in batches]
    scorer.session = CountingSession()
    with ThreadPoolExecutor(8) as pool:
        concurrent = list(pool.map(lambda b: scorer(*b), batches))
    assert most[0] == 1
    for a, b in zip(serial, concurrent):
        np.testing.assert_array_equal(a, b)


def row_local_scorer(per_token: bool):
    """A scorer whose answer for a window depends only on that window's attended tokens (as a real
    model's does, up to float rounding), recording the padded size of every call."""
    calls = []

    def score(ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        calls.append(ids.shape)
        codes = (ids * 7 + np.cumsum(mask, axis=1)) % 97 * mask  # integers: exact whatever the padding
        return (codes / 97.0 if per_token else codes.sum(axis=1) % 89 / 89.0).astype(np.float32)

    return score, calls


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.tuples(st.integers(1, 5), st.integers(1, 40)), min_size=1, max_size=6),
    st.booleans(),
    st.integers(8, 200),
    st.randoms(use_true_random=False),
)
def test_regrouped_requests_score_as_each_window_alone(requests, per_token, budget, rnd):
    """Pooling the windows of several requests into length-sorted sub-batches changes no score,
    keeps every call within the token budget (unless one window alone is longer), and gives each
    request an output of its own shape, 0 past a window's last attended token."""
    ids, masks = [], []
    for n, width in requests:
        a = np.array([[rnd.randrange(1, 1000) for _ in range(width)] for _ in range(n)], dtype=np.int64)
        m = np.zeros_like(a)
        for row in m:
            row[: rnd.randint(1, width)] = 1
            if width > 2 and rnd.random() < 0.2:
                row[rnd.randrange(width)] = 0  # a hole: kept, not treated as the end
        ids.append(a)
        masks.append(m)
    score, calls = row_local_scorer(per_token)
    outputs = score_window_requests(score, ids, masks, per_token, budget)
    alone, _ = row_local_scorer(per_token)
    for a, m, out in zip(ids, masks, outputs):
        assert out.shape == (a.shape if per_token else (a.shape[0], 1)) and out.dtype == np.float32
        for i in range(a.shape[0]):
            end = int(np.flatnonzero(m[i]).max(initial=0)) + 1
            expected = alone(a[i : i + 1, :end], m[i : i + 1, :end])[0]
            if per_token:
                np.testing.assert_array_equal(out[i, :end], expected)
                assert not out[i, end:].any()
            else:
                assert out[i, 0] == expected
    for rows, width in calls:
        assert rows * width <= budget or rows == 1


@settings(max_examples=30, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 4), st.integers(1, 30)), min_size=1, max_size=5), st.integers(8, 120), st.randoms(use_true_random=False))
def test_regrouped_joint_requests_equal_each_head_alone(requests, budget, rnd):
    """A joint scorer's two outputs per request equal what its token and document parts give alone."""
    ids = [np.array([[rnd.randrange(1, 1000) for _ in range(w)] for _ in range(n)], dtype=np.int64) for n, w in requests]
    masks = [np.tril(np.ones_like(a))[: a.shape[0]] if a.shape[0] <= a.shape[1] else np.ones_like(a) for a in ids]
    token, _ = row_local_scorer(True)
    doc, _ = row_local_scorer(False)
    joint = score_window_requests(lambda i, m: (token(i, m), doc(i, m)), ids, masks, True, budget, joint=True)
    alone = zip(score_window_requests(token, ids, masks, True, budget), score_window_requests(doc, ids, masks, False, budget))
    for (jt, jd), (t, d) in zip(joint, alone):
        np.testing.assert_array_equal(jt, t)
        np.testing.assert_array_equal(jd, d)
