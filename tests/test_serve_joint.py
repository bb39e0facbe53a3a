"""A joint model (one encoder, token and document heads) served by the real Triton: one call per
window batch gives both scores to FilterClient, the gateway, filter_text and `tokfilter filter --server`."""

from dataclasses import replace
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from tokfilter.clients import FilterClient
from tokfilter.clients.engines.local import FilterSettings, run_local
from tokfilter.clients.filter_client import key_headers
from tokfilter.errors import TokfilterError
from tokfilter.identity import model_identity
from tokfilter.inference import OnnxWindowScorer
from tokfilter.modelcard import JOINT_DOC_OUTPUT
from tokfilter.scoring import ScoringPipeline
from tokfilter.server.model_repo import place_models
from tokfilter.server.serve import running_server
from tokfilter.server.triton import free_port
from tokfilter.windows import load_tokenizer, pad_batch

API_KEY = "joint-key"
TEXTS = ["The patient was given insulin for type 2 diabetes; the dose was raised after a week. " * 12, "",
         "Mitochondria make ATP in the cell."]


@pytest.fixture(scope="module")
def joint_repo(tiny_joint_model_dir, tmp_path_factory) -> Path:
    models = tmp_path_factory.mktemp("joint_models")
    (models / "joint_classifier").symlink_to(tiny_joint_model_dir)
    repo = tmp_path_factory.mktemp("joint_repo")
    place_models(models, repo, joint=True)
    return repo


@pytest.fixture(scope="module")
def server(joint_repo, tmp_path_factory):
    ports = {"grpc_port": free_port(), "http_port": free_port(), "metrics_port": free_port(), "gateway_port": free_port()}
    with running_server(joint_repo, api_key=API_KEY, ort_threads=1, log_dir=tmp_path_factory.mktemp("logs"), **ports) as endpoints:
        yield endpoints


def inference_count(client, model: str) -> int:
    stats = client.get_inference_statistics(model, headers=key_headers(API_KEY), as_json=True)
    return int(stats["model_stats"][0].get("inference_count", 0))


def test_token_slot_serves_both_heads_of_one_run(server, tiny_joint_model_dir):
    client = grpcclient.InferenceServerClient(f"127.0.0.1:{server.grpc_port}")
    config = client.get_model_config("token_classifier", as_json=True, headers=key_headers(API_KEY))["config"]
    assert [o["name"] for o in config["output"]] == ["forget_prob", JOINT_DOC_OUTPUT]
    tokenizer = load_tokenizer(tiny_joint_model_dir / "tokenizer.json")
    ids, mask = pad_batch([np.asarray(tokenizer.encode(t).ids) for t in ("insulin dose for the patient", "the cell")])
    token, doc = OnnxWindowScorer(tiny_joint_model_dir)(ids, mask)
    inputs = [grpcclient.InferInput("input_ids", list(ids.shape), "INT64"), grpcclient.InferInput("attention_mask", list(mask.shape), "INT64")]
    inputs[0].set_data_from_numpy(ids)
    inputs[1].set_data_from_numpy(mask)
    result = client.infer("token_classifier", inputs, headers=key_headers(API_KEY))
    np.testing.assert_allclose(result.as_numpy("forget_prob") * mask, token * mask, atol=1e-5)
    np.testing.assert_allclose(result.as_numpy(JOINT_DOC_OUTPUT), doc[:, None], atol=1e-5)
    doc_slot = client.infer("doc_classifier", inputs, headers=key_headers(API_KEY)).as_numpy("forget_prob")
    np.testing.assert_allclose(doc_slot, doc[:, None], atol=1e-5)  # the doc slot serves the same model's document head


def test_filter_client_scores_both_heads_with_one_call_per_batch(server, tiny_joint_model_dir):
    stats = grpcclient.InferenceServerClient(f"127.0.0.1:{server.grpc_port}")
    doc_calls = inference_count(stats, "doc_classifier")
    with FilterClient(server.grpc_url, tiny_joint_model_dir, max_in_flight=2, max_batch_tokens=256, api_key=API_KEY) as client:
        assert client.joint and client.pipeline.token_model.joint and client.pipeline.doc_model is None
        remote = client.filter(TEXTS)
    assert inference_count(stats, "doc_classifier") == doc_calls  # no second model was called
    local = ScoringPipeline.from_model_dirs(tiny_joint_model_dir).score(TEXTS)
    assert len(local[0].token_ids) > 64  # several windows
    for r, l in zip(remote, local):
        np.testing.assert_allclose(r.token_probs, l.token_probs, atol=1e-5)
        assert r.doc_score == pytest.approx(l.doc_score, abs=1e-5)


def test_gateway_and_filter_text_give_the_joint_document_score(server, tiny_joint_model_dir):
    local = ScoringPipeline.from_model_dirs(tiny_joint_model_dir).score(TEXTS)
    body = httpx.post(f"{server.gateway_url}/v1/filter", json={"documents": [{"id": str(i), "text": t} for i, t in enumerate(TEXTS)]},
                      headers={"X-API-Key": API_KEY}, timeout=60).json()
    assert [r["doc_score"] for r in body["results"]] == pytest.approx([l.doc_score for l in local], abs=1e-5)
    client = grpcclient.InferenceServerClient(f"127.0.0.1:{server.grpc_port}")
    text = grpcclient.InferInput("text", [1, 1], "BYTES")
    text.set_data_from_numpy(np.array([[TEXTS[0].encode()]], dtype=np.object_))
    import json

    result = json.loads(client.infer("filter_text", [text], headers=key_headers(API_KEY)).as_numpy("result")[0, 0])
    assert result["doc_score"] == pytest.approx(local[0].doc_score, abs=1e-5)


def test_filter_with_server_records_the_joint_model_and_refuses_the_cascade(server, tiny_corpus_dir, tiny_joint_model_dir,
                                                                            tiny_target_tokenizer, tmp_path):
    settings = FilterSettings(token_model=str(tiny_joint_model_dir), doc_model=str(tmp_path / "absent"),
                              target_tokenizer=str(tiny_target_tokenizer), buffer_docs=8, server=server.grpc_url, api_key=API_KEY)
    inputs = [str(tiny_corpus_dir / "validation.jsonl")]
    manifest = run_local(inputs, tmp_path / "served", settings, show_progress=False)
    assert manifest["complete"] and manifest["token_model"] == manifest["doc_model"] == model_identity(tiny_joint_model_dir, "fp32")
    with pytest.raises(TokfilterError, match="--doc-prefilter needs a separate"):
        run_local(inputs, tmp_path / "cascade", replace(settings, doc_prefilter=0.5), show_progress=False)
