"""The datatrove step under datatrove's own LocalPipelineExecutor, reader and writer, with the tiny
exported classifiers scoring in process: metadata equals what ScoringPipeline computes directly."""

import gzip
import json

import numpy as np
import pytest

from tokfilter.scoring import HIDDEN_TOKEN, ScoringPipeline, hide_spans


@pytest.fixture(scope="module")
def documents(tiny_corpus_dir):
    return [json.loads(line) for line in (tiny_corpus_dir / "test.jsonl").read_text().splitlines()[:12]]


def run_pipeline(tmp_path, documents, **step_args) -> list[dict]:
    tmp_path.mkdir(parents=True, exist_ok=True)
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.readers import JsonlReader
    from datatrove.pipeline.writers import JsonlWriter

    from tokfilter.clients.datatrove import TokfilterScorer

    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "docs.jsonl").write_text("".join(json.dumps({"id": d["id"], "text": d["text"]}) + "\n" for d in documents))
    LocalPipelineExecutor(
        pipeline=[JsonlReader(str(tmp_path / "in")), TokfilterScorer(batch_docs=5, **step_args), JsonlWriter(str(tmp_path / "out"))],
        tasks=1, logging_dir=str(tmp_path / "logs"),
    ).run()
    rows = []
    for path in sorted((tmp_path / "out").glob("*.jsonl.gz")):
        rows += [json.loads(line) for line in gzip.open(path, "rt")]
    return rows


@pytest.mark.parametrize("hide", [False, True])
def test_step_adds_scores_and_spans_under_the_local_executor(tiny_models_dir, documents, tmp_path, hide):
    token_dir, doc_dir = tiny_models_dir / "token_classifier", tiny_models_dir / "doc_classifier"
    texts = [d["text"] for d in documents]
    pipeline = ScoringPipeline.from_model_dirs(token_dir, doc_dir)
    # a threshold inside this tiny model's range, so some tokens are flagged and some not
    threshold = float(np.median(np.concatenate([s.token_probs for s in pipeline.score(texts)])))
    expected = pipeline.score(texts, threshold)
    assert any(s.spans for s in expected) and any(s.flagged_fraction < 1 for s in expected)

    rows = run_pipeline(tmp_path, documents, token_model=token_dir, doc_model=doc_dir, threshold=threshold, hide=hide)
    assert [r["id"] for r in rows] == [d["id"] for d in documents]
    for row, text, s in zip(rows, texts, expected):
        meta = row["metadata"]
        assert meta["tokfilter_doc_score"] == pytest.approx(s.doc_score, abs=1e-6)
        assert meta["tokfilter_flagged_fraction"] == pytest.approx(s.flagged_fraction)
        assert meta["tokfilter_threshold"] == threshold
        assert meta["tokfilter_spans"] == [[sp.start, sp.end, pytest.approx(sp.score, abs=1e-6)] for sp in s.spans]
        assert row["text"] == (hide_spans(text, s.spans) if hide else text)
        if hide and s.spans:
            assert HIDDEN_TOKEN in row["text"]


def test_step_without_a_document_model(tiny_models_dir, documents, tmp_path):
    rows = run_pipeline(tmp_path, documents[:3], token_model=tiny_models_dir / "token_classifier", doc_model=None)
    assert [r["metadata"]["tokfilter_doc_score"] for r in rows] == [None] * 3
    assert all(0.0 <= r["metadata"]["tokfilter_flagged_fraction"] <= 1.0 for r in rows)


@pytest.mark.slow
def test_step_against_a_running_server(tiny_models_dir, documents, tmp_path):
    """server="grpc://...": the same metadata from a real Triton server (FilterClient) as in process."""
    from tokfilter.server.model_repo import place_models
    from tokfilter.server.serve import running_server
    from tokfilter.server.triton import free_port

    token_dir, doc_dir = tiny_models_dir / "token_classifier", tiny_models_dir / "doc_classifier"
    local = run_pipeline(tmp_path / "local", documents, token_model=token_dir, doc_model=doc_dir, threshold=0.5)
    place_models(tiny_models_dir, tmp_path / "repo")
    ports = {"grpc_port": free_port(), "http_port": free_port(), "metrics_port": free_port(), "gateway_port": None}
    with running_server(tmp_path / "repo", ort_threads=1, log_dir=tmp_path / "logs", **ports) as endpoints:
        served = run_pipeline(tmp_path / "served", documents, token_model=token_dir, doc_model=doc_dir, threshold=0.5,
                              server=endpoints.grpc_url)
    assert [r["id"] for r in served] == [r["id"] for r in local]
    for s, l in zip(served, local):
        s, l = s["metadata"], l["metadata"]
        assert s["tokfilter_doc_score"] == pytest.approx(l["tokfilter_doc_score"], abs=1e-4)
        assert s["tokfilter_flagged_fraction"] == pytest.approx(l["tokfilter_flagged_fraction"], abs=0.02)
        assert s["tokfilter_threshold"] == 0.5
