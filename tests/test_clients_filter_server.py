"""`tokfilter filter --server`: the same shards through a real Triton server; an unreachable server
fails clearly after bounded retries."""

import subprocess
import sys
import time

import numpy as np
import pytest

from tokfilter.clients.engines.local import FilterSettings, run_local
from tokfilter.clients.shards.writer import open_shards
from tokfilter.server.model_repo import place_models
from tokfilter.server.serve import running_server
from tokfilter.server.triton import free_port
from tokfilter.training.pretrain.tokenizer import corpus_texts, train_target_tokenizer


@pytest.fixture(scope="module")
def settings(tiny_corpus_dir, tiny_models_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("target") / "tokenizer.json"
    tokenizer = train_target_tokenizer(corpus_texts([str(tiny_corpus_dir / "test.jsonl")]), out, vocab_size=400)
    return FilterSettings(token_model=str(tiny_models_dir / "token_classifier"), doc_model=str(tiny_models_dir / "doc_classifier"),
                          target_tokenizer=str(tokenizer), buffer_docs=4, shard_tokens=2000, threads=1, max_in_flight=2)


def documents(out_dir):
    _, shards = open_shards(out_dir)
    return {d: (s.ids[a : a + n].tolist(), np.asarray(s.probs[a : a + n], np.float32), score)
            for s in shards for d, a, n, score in zip(s.doc_ids, s.starts, s.lengths, s.doc_scores)}


def test_served_filter_matches_in_process(tiny_corpus_dir, tiny_models_dir, settings, tmp_path):
    from dataclasses import replace

    inputs = [str(tiny_corpus_dir / "test.jsonl")]
    run_local(inputs, tmp_path / "local", settings, show_progress=False)
    repo = tmp_path / "repo"
    place_models(tiny_models_dir, repo)
    ports = {"grpc_port": free_port(), "http_port": free_port(), "metrics_port": free_port(), "gateway_port": None}
    with running_server(repo, ort_threads=1, log_dir=tmp_path / "logs", **ports) as endpoints:
        manifest = run_local(inputs, tmp_path / "served", replace(settings, server=endpoints.grpc_url), show_progress=False)
    assert manifest["complete"]
    local, served = documents(tmp_path / "local"), documents(tmp_path / "served")
    assert local.keys() == served.keys()
    for doc_id, (ids, probs, score) in local.items():
        assert served[doc_id][0] == ids
        np.testing.assert_allclose(served[doc_id][1], probs, atol=2e-3)
        assert served[doc_id][2] == pytest.approx(score, abs=1e-4)


def test_unreachable_server_fails_after_the_retry_deadline(tiny_corpus_dir, settings, tmp_path):
    cmd = [sys.executable, "-m", "tokfilter.cli", "filter", str(tiny_corpus_dir / "test.jsonl"), "--out", str(tmp_path / "o"),
           "--server", f"grpc://127.0.0.1:{free_port()}", "--token-model", settings.token_model,
           "--doc-model", settings.doc_model, "--target-tokenizer", settings.target_tokenizer, "--no-progress", "--retry-deadline", "3"]
    start = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "did not recover within the retry deadline of 3 s" in proc.stderr and "Traceback" not in proc.stderr
    assert 3 <= time.monotonic() - start < 30
    assert not (tmp_path / "o" / "manifest.json").exists()
