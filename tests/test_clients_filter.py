"""`tokfilter filter` with in-process ONNX Runtime: formats, errors, cascade, kill and resume."""

import gzip
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from tokfilter.clients import MaskedShards
from dataclasses import replace

from tokfilter.clients.engines.local import FilterSettings, run_local
from tokfilter.clients.shards.writer import open_shards
from tokfilter.errors import TokfilterError


@pytest.fixture(scope="module")
def settings(tiny_models_dir, tiny_target_tokenizer):
    return FilterSettings(token_model=str(tiny_models_dir / "token_classifier"), doc_model=str(tiny_models_dir / "doc_classifier"),
                          target_tokenizer=str(tiny_target_tokenizer), buffer_docs=8, shard_tokens=400, threads=1)


def cli_args(settings, *extra):
    return [sys.executable, "-m", "tokfilter.cli", "filter", "--token-model", settings.token_model, "--doc-model",
            settings.doc_model, "--target-tokenizer", settings.target_tokenizer, "--buffer-docs", str(settings.buffer_docs),
            "--shard-tokens", str(settings.shard_tokens), "--threads", "1", "--no-progress", *extra]


def shard_docs(out_dir):
    manifest, shards = open_shards(out_dir)
    docs = {}
    for s in shards:
        for doc_id, start, length, score in zip(s.doc_ids, s.starts, s.lengths, s.doc_scores):
            docs[doc_id] = (np.asarray(s.ids[start : start + length]), np.asarray(s.probs[start : start + length]), score)
    return manifest, docs


def dir_bytes(path):
    return {p.name: p.read_bytes() for p in sorted(path.iterdir())}


def test_filter_writes_projected_shards_that_train_reads(tiny_corpus_dir, settings, tmp_path):
    manifest = run_local([str(tiny_corpus_dir / "test.jsonl")], tmp_path, settings, show_progress=False)
    texts = {json.loads(l)["id"]: json.loads(l)["text"] for l in (tiny_corpus_dir / "test.jsonl").read_text().splitlines()}
    manifest, docs = shard_docs(tmp_path)
    assert manifest["complete"] and manifest["counts"]["docs"] == len(texts) == len(docs)
    assert manifest["inputs"][0]["records_read"] == len(texts) and len(manifest["shards"]) > 1
    assert manifest["counts"]["tokens"] == sum(len(d[0]) for d in docs.values())
    from tokfilter.clients.projection import TargetTokenizer

    target = TargetTokenizer(settings.target_tokenizer)
    for doc_id, (ids, probs, score) in docs.items():
        assert ids.tolist() == target.encode([texts[doc_id]])[0].ids.tolist()
        assert ((probs >= 0) & (probs <= 1)).all() and 0 <= score <= 1
    ds = MaskedShards(tmp_path, seq_len=32, threshold=manifest["threshold"], mode="mask")
    weights = np.concatenate([w.numpy() for _, _, w in ds])
    assert len(weights) == 32 * ds.num_samples and 0 < weights.mean() <= 1


def test_jsonl_gz_zst_parquet_and_stdin_give_the_same_documents(tiny_corpus_dir, settings, tmp_path):
    raw = (tiny_corpus_dir / "validation.jsonl").read_bytes()
    (tmp_path / "v.jsonl.gz").write_bytes(gzip.compress(raw))
    (tmp_path / "v.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(raw))
    rows = [json.loads(l) for l in raw.decode().splitlines()]
    pq.write_table(pa.table({"body": [r["text"] for r in rows], "key": [r["id"] for r in rows]}), tmp_path / "v.parquet")
    run_local([str(tiny_corpus_dir / "validation.jsonl")], tmp_path / "plain", settings, show_progress=False)
    _, reference = shard_docs(tmp_path / "plain")
    for name in ("v.jsonl.gz", "v.jsonl.zst"):
        run_local([str(tmp_path / name)], tmp_path / name.replace(".", "_"), settings, show_progress=False)
        assert dir_bytes(tmp_path / name.replace(".", "_")).keys() == dir_bytes(tmp_path / "plain").keys()
        _, docs = shard_docs(tmp_path / name.replace(".", "_"))
        assert {k: v[0].tolist() for k, v in docs.items()} == {k: v[0].tolist() for k, v in reference.items()}
    run_local([str(tmp_path / "v.parquet")], tmp_path / "pq", replace(settings, text_field="body", id_field="key"), show_progress=False)
    _, docs = shard_docs(tmp_path / "pq")
    assert {k: v[0].tolist() for k, v in docs.items()} == {k: v[0].tolist() for k, v in reference.items()}
    proc = subprocess.run(cli_args(settings, "-", "--out", str(tmp_path / "stdin")), input=raw, capture_output=True)
    assert proc.returncode == 0, proc.stderr.decode()
    _, docs = shard_docs(tmp_path / "stdin")
    assert {k: v[0].tolist() for k, v in docs.items()} == {k: v[0].tolist() for k, v in reference.items()}


def test_malformed_lines_are_reported_with_file_and_line(tiny_corpus_dir, settings, tmp_path):
    lines = (tiny_corpus_dir / "validation.jsonl").read_text().splitlines()[:5]
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join(lines[:2] + ["{not json", json.dumps({"id": "x", "text": 3})] + lines[2:]) + "\n")
    proc = subprocess.run(cli_args(settings, str(bad), "--out", str(tmp_path / "skip")), capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert f"{bad}:3: not valid JSON" in proc.stderr and f"{bad}:4: field 'text' must be a string" in proc.stderr
    manifest = json.loads((tmp_path / "skip" / "manifest.json").read_text())
    assert manifest["counts"]["skipped"] == 2 and manifest["counts"]["docs"] == 5
    assert manifest["inputs"][0]["records_read"] == 7
    proc = subprocess.run(cli_args(settings, str(bad), "--out", str(tmp_path / "fail"), "--on-error", "fail"),
                          capture_output=True, text=True)
    assert proc.returncode == 2 and f"{bad}:3: not valid JSON" in proc.stderr and "Traceback" not in proc.stderr


def test_bad_arguments_are_clear_errors(tiny_corpus_dir, settings, tmp_path):
    test_file = str(tiny_corpus_dir / "test.jsonl")
    with pytest.raises(TokfilterError, match="no such file"):
        run_local([str(tmp_path / "missing.jsonl")], tmp_path / "o", settings, show_progress=False)
    with pytest.raises(TokfilterError, match="format must be"):
        run_local([str(tiny_corpus_dir)], tmp_path / "o", settings, show_progress=False)
    with pytest.raises(TokfilterError, match="--doc-prefilter must be in"):
        run_local([test_file], tmp_path / "o", replace(settings, doc_prefilter=2.0), show_progress=False)
    with pytest.raises(TokfilterError, match="--max-batch-tokens must be >= 1, got 0"):
        run_local([test_file], tmp_path / "o", replace(settings, max_batch_tokens=0), show_progress=False)
    run_local([test_file], tmp_path / "done", settings, show_progress=False)
    with pytest.raises(TokfilterError, match="already holds shards"):
        run_local([test_file], tmp_path / "done", settings, show_progress=False)
    with pytest.raises(TokfilterError, match="--resume: settings differs"):
        run_local([test_file], tmp_path / "done", replace(settings, buffer_docs=3), resume=True, show_progress=False)


def test_cascade_skips_the_token_model_below_low(tiny_corpus_dir, settings, tmp_path):
    test_file = [str(tiny_corpus_dir / "test.jsonl")]
    full = run_local(test_file, tmp_path / "full", settings, show_progress=False)
    _, full_docs = shard_docs(tmp_path / "full")
    low = float(np.median([d[2] for d in full_docs.values()]))
    cascade = run_local(test_file, tmp_path / "cascade", replace(settings, doc_prefilter=low), show_progress=False)
    _, docs = shard_docs(tmp_path / "cascade")
    c = cascade["counts"]
    assert c["classifier_tokens"] == full["counts"]["classifier_tokens"] > c["token_model_tokens"] > 0
    assert c["prefiltered_docs"] == sum(d[2] < low for d in docs.values()) > 0
    for doc_id, (ids, probs, score) in docs.items():
        assert score == pytest.approx(full_docs[doc_id][2], abs=1e-6)
        if score < low:
            assert not probs.any()
        else:
            np.testing.assert_allclose(probs, full_docs[doc_id][1], atol=2e-3)


def test_killed_run_resumes_to_identical_bytes(tiny_corpus_dir, settings, tmp_path):
    settings = replace(settings, buffer_docs=2)
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text((tiny_corpus_dir / "test.jsonl").read_text() * 3)
    subprocess.run(cli_args(settings, str(corpus), "--out", str(tmp_path / "whole")), check=True, capture_output=True)
    whole = dir_bytes(tmp_path / "whole")
    assert len(json.loads(whole["manifest.json"])["shards"]) >= 10

    proc = subprocess.Popen(cli_args(settings, str(corpus), "--out", str(tmp_path / "killed")),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    manifest_path = tmp_path / "killed" / "manifest.json"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if len(json.loads(manifest_path.read_text())["shards"]) >= 3:
                break
        except (FileNotFoundError, json.JSONDecodeError):
            pass
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    at_kill = json.loads(manifest_path.read_text())
    assert not at_kill["complete"] and 3 <= len(at_kill["shards"]) < len(json.loads(whole["manifest.json"])["shards"])

    subprocess.run(cli_args(settings, str(corpus), "--out", str(tmp_path / "killed"), "--resume"), check=True, capture_output=True)
    assert dir_bytes(tmp_path / "killed") == whole


def test_joint_model_filters_in_one_pass_and_refuses_the_cascade(tiny_corpus_dir, settings, tiny_joint_model_dir, tmp_path):
    """A joint token model scores tokens and documents itself (its doc_model setting unused): the
    shards hold its document scores, the manifest records it for both roles, and --doc-prefilter,
    which would skip nothing, is refused before any output."""
    from tokfilter.identity import model_identity
    from tokfilter.scoring import ScoringPipeline

    joint = replace(settings, token_model=str(tiny_joint_model_dir), doc_model=str(tmp_path / "absent"))
    run_local([str(tiny_corpus_dir / "test.jsonl")], tmp_path / "out", joint, show_progress=False)
    manifest, docs = shard_docs(tmp_path / "out")
    identity = model_identity(tiny_joint_model_dir, "fp32")
    assert manifest["complete"] and manifest["token_model"] == manifest["doc_model"]
    assert {k: v for k, v in manifest["token_model"].items() if k != "runs_on"} == identity
    records = [json.loads(l) for l in (tiny_corpus_dir / "test.jsonl").read_text().splitlines()]
    expected = ScoringPipeline.from_model_dirs(tiny_joint_model_dir).score([r["text"] for r in records])
    for record, scores in zip(records, expected):
        assert docs[record["id"]][2] == pytest.approx(scores.doc_score, abs=1e-5)
    with pytest.raises(TokfilterError, match="--doc-prefilter needs a separate"):
        run_local([str(tiny_corpus_dir / "test.jsonl")], tmp_path / "cascade", replace(joint, doc_prefilter=0.5), show_progress=False)
    assert not (tmp_path / "cascade").exists()


@pytest.mark.skipif(importlib.util.find_spec("openvino") is None, reason="openvino is not installed")
def test_filter_records_the_runtime_and_resume_refuses_another(tiny_corpus_dir, settings, tmp_path):
    """The manifest says which engine and precision scored each model; a resumed run must run the
    same ones (their scores differ in the last digits). The OpenVINO run is a `tokfilter filter`
    process of its own: after OpenVINO ran in run_local's threads, a later fork (DataLoader workers)
    crashed the process here (docs/engines.md)."""
    test_file = str(tiny_corpus_dir / "test.jsonl")
    proc = subprocess.run(cli_args(settings, test_file, "--out", str(tmp_path / "ov"), "--runtime", "openvino", "--precision", "fp32"),
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    manifest = json.loads((tmp_path / "ov" / "manifest.json").read_text())
    assert manifest["token_model"]["runs_on"] == manifest["doc_model"]["runs_on"] == "openvino fp32"
    assert manifest["token_model"]["precision"] == "fp32"  # the identity names the model file
    assert "[filter] token_model: openvino fp32 (openvino asked for)" in proc.stderr
    with pytest.raises(TokfilterError, match="scored token_model on openvino fp32, this one would run onnxruntime fp32"):
        run_local([test_file], tmp_path / "ov", settings, resume=True, show_progress=False)
    with pytest.raises(TokfilterError, match="--runtime must be one of"):
        run_local([test_file], tmp_path / "o", replace(settings, runtime="tensorrt"), show_progress=False)
