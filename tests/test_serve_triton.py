"""The real Triton server, the REST gateway and FilterClient, against in-process ONNX Runtime.

One server (Triton + gateway) is started for the whole module on free loopback ports.
"""

import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from tokfilter.clients import FilterClient
from tokfilter.clients.filter_client import API_KEY_HEADER, ServerError, key_headers
from tokfilter.errors import TokfilterError
from tokfilter.inference import OnnxWindowScorer
from tokfilter.paths import MODEL_REPO_DIR
from tokfilter.scoring import ScoringPipeline, hide_spans, safe_text
from tokfilter.modelcard import config_parameters, load_model_card
from tokfilter.server.model_repo import SERVED_MODELS, WINDOW_MODELS, place_models
from tokfilter.server.serve import running_server
from tokfilter.server.triton import free_port
from tokfilter.windows import pad_batch

API_KEY = "test-key"  # the gateway and Triton's inference require it
KEY_HEADERS = {"grpc": key_headers(API_KEY), "http": {API_KEY_HEADER: API_KEY}}
TEXTS = [
    "The patient was given insulin for type 2 diabetes; the dose was raised after a week. " * 12,
    "",
    "Mitochondria make ATP in the cell.",
    "odd \ud800 unicode \u0000 🧬 e\u0301 \u200b end",
]


def free_ports() -> dict:
    return {"grpc_port": free_port(), "http_port": free_port(), "metrics_port": free_port(), "gateway_port": free_port()}


@pytest.fixture(scope="module")
def repo(tiny_models_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("model_repo")
    place_models(tiny_models_dir, out)
    return out


@pytest.fixture(scope="module")
def server(repo, tmp_path_factory):
    with running_server(repo, api_key=API_KEY, ort_threads=1, log_dir=tmp_path_factory.mktemp("logs"), **free_ports()) as endpoints:
        yield endpoints


@pytest.fixture(scope="module")
def local_pipeline(tiny_models_dir) -> ScoringPipeline:
    return ScoringPipeline.from_model_dirs(tiny_models_dir / "token_classifier", tiny_models_dir / "doc_classifier")


def test_committed_configs_parse_against_tritons_schema():
    for model in SERVED_MODELS:
        config = text_format.Parse((MODEL_REPO_DIR / model / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
        assert config.name == model and config.backend == "python" and config.max_batch_size > 0
        assert config.HasField("dynamic_batching")
    for model in WINDOW_MODELS:
        gpu = text_format.Parse((MODEL_REPO_DIR / model / "configs" / "gpu.pbtxt").read_text(), model_config_pb2.ModelConfig())
        assert gpu.name == model and gpu.backend == "onnxruntime"
        assert gpu.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_GPU
        accelerators = gpu.optimization.execution_accelerators.gpu_execution_accelerator
        assert [a.name for a in accelerators] == ["tensorrt"]
        assert [o.name for o in gpu.output] == ["logits"]


def test_served_parameters_read_back_including_empty_ones(server, tiny_models_dir):
    """Triton's JSON config leaves out an empty parameter's value; it reads back as "" (for
    ``max_batch_tokens``: the device's default), next to the windowing published from the card."""
    client = grpcclient.InferenceServerClient(f"127.0.0.1:{server.grpc_port}")
    for model in WINDOW_MODELS:
        params = config_parameters(client.get_model_config(model, as_json=True, headers=KEY_HEADERS["grpc"])["config"])
        card = load_model_card(tiny_models_dir / model)
        assert params["max_batch_tokens"] == ""
        assert (params["precision"], int(params["max_length"]), int(params["stride"])) == ("fp32", card.max_length, card.stride)


def window_batch(tokenizer_path: Path) -> tuple[np.ndarray, np.ndarray]:
    from tokfilter.windows import load_tokenizer

    tokenizer = load_tokenizer(tokenizer_path)
    ids = [np.asarray(tokenizer.encode(t).ids) for t in ("insulin dose for the patient", "the cell")]
    return pad_batch(ids)


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_triton_window_models_equal_in_process_onnx(server, tiny_models_dir, protocol):
    lib, url = (grpcclient, f"127.0.0.1:{server.grpc_port}") if protocol == "grpc" else (httpclient, f"127.0.0.1:{server.http_port}")
    client = lib.InferenceServerClient(url)
    ids, mask = window_batch(tiny_models_dir / "token_classifier" / "tokenizer.json")
    for model in WINDOW_MODELS:
        inputs = [lib.InferInput("input_ids", list(ids.shape), "INT64"), lib.InferInput("attention_mask", list(mask.shape), "INT64")]
        inputs[0].set_data_from_numpy(ids)
        inputs[1].set_data_from_numpy(mask)
        served = client.infer(model, inputs, headers=KEY_HEADERS[protocol]).as_numpy("forget_prob")
        expected = OnnxWindowScorer(tiny_models_dir / model)(ids, mask)
        if model == "doc_classifier":
            expected = expected[:, None]
        np.testing.assert_allclose(served * (mask if served.shape == mask.shape else 1),
                                   expected * (mask if expected.shape == mask.shape else 1), atol=1e-5)


def test_filter_client_equals_in_process_pipeline(server, tiny_models_dir, local_pipeline):
    with FilterClient(server.grpc_url, tiny_models_dir / "token_classifier", max_in_flight=4, max_batch_tokens=256, api_key=API_KEY) as client:
        remote = client.filter(TEXTS)
        assert client.threshold == local_pipeline.threshold
    local = local_pipeline.score(TEXTS)
    assert len(remote[0].token_ids) > 64  # several windows of the tiny model (max_length 64)
    for r, l, text in zip(remote, local, TEXTS):
        np.testing.assert_array_equal(r.offsets, l.offsets)
        np.testing.assert_allclose(r.token_probs, l.token_probs, atol=1e-5)
        assert r.doc_score == pytest.approx(l.doc_score, abs=1e-5)
        assert len(r.char_probs) == len(text)
        assert [(s.start, s.end) for s in r.spans] == [(s.start, s.end) for s in l.spans]


def test_filter_client_refuses_a_different_tokenizer(server, tiny_models_dir, tmp_path):
    other = tmp_path / "token_classifier"
    other.mkdir()
    data = json.loads((tiny_models_dir / "token_classifier" / "tokenizer.json").read_text())
    data["added_tokens"] = data["added_tokens"][:-1]
    (other / "tokenizer.json").write_text(json.dumps(data))
    start = time.monotonic()
    with pytest.raises(TokfilterError, match="tokenizer") as refused:
        FilterClient(server.grpc_url, other, api_key=API_KEY, retry_deadline_s=30)
    assert not isinstance(refused.value, ServerError) and time.monotonic() - start < 3  # a configuration error: not retried


def test_filter_text_model_returns_the_pipelines_spans(server, local_pipeline):
    client = grpcclient.InferenceServerClient(f"127.0.0.1:{server.grpc_port}")
    texts = [TEXTS[0], TEXTS[2]]
    text_input = grpcclient.InferInput("text", [len(texts), 1], "BYTES")
    text_input.set_data_from_numpy(np.array([[t.encode()] for t in texts], dtype=np.object_))
    results = [json.loads(r[0]) for r in client.infer("filter_text", [text_input], headers=KEY_HEADERS["grpc"]).as_numpy("result")]
    for served, local in zip(results, local_pipeline.score(texts)):
        assert served["doc_score"] == pytest.approx(local.doc_score, abs=1e-5)
        assert [(s["start"], s["end"]) for s in served["spans"]] == [(s.start, s.end) for s in local.spans]
        assert served["flagged_fraction"] == pytest.approx(local.flagged_fraction)


def test_gateway_filters_spans_and_remove(server, local_pipeline):
    documents = [{"id": str(i), "text": t} for i, t in enumerate(TEXTS)]
    headers = {"Authorization": f"Bearer {API_KEY}"}
    threshold = float(np.median(local_pipeline.score([TEXTS[0]])[0].token_probs))  # flags about half the tokens
    payload = json.dumps({"documents": documents, "threshold": threshold, "mode": "remove"})  # ASCII: \ud800 escaped
    body = httpx.post(f"{server.gateway_url}/v1/filter", content=payload, headers=headers | {"Content-Type": "application/json"},
                      timeout=60).json()
    assert body["threshold"] == threshold and body["model"]
    local = local_pipeline.score(TEXTS, threshold)
    assert local[0].spans  # the threshold does flag something
    for doc, result, expected in zip(documents, body["results"], local):
        assert result["id"] == doc["id"]
        assert result["doc_score"] == pytest.approx(expected.doc_score, abs=1e-5)
        assert [(s["start"], s["end"]) for s in result["spans"]] == [(s.start, s.end) for s in expected.spans]
        assert result["text"] == hide_spans(safe_text(doc["text"]), expected.spans)
    spans_only = httpx.post(f"{server.gateway_url}/v1/filter", json={"documents": documents[:1]}, headers={"X-API-Key": API_KEY}).json()
    assert "text" not in spans_only["results"][0] or spans_only["results"][0]["text"] is None
    assert spans_only["threshold"] == local_pipeline.threshold


@pytest.mark.parametrize(
    "request_kwargs, key, status, expected",
    [
        ({"json": {"documents": []}}, None, 401, "API key"),
        ({"json": {"documents": []}}, "wrong", 401, "API key"),
        ({"content": b"{not json", "headers": {"Content-Type": "application/json"}}, API_KEY, 400, "not valid JSON"),
        ({"json": {"documents": [{"id": "a"}]}}, API_KEY, 422, "documents.0.text"),
        ({"json": {"documents": [], "threshold": 1.5}}, API_KEY, 422, "threshold"),
        ({"json": {"documents": [], "mode": "erase"}}, API_KEY, 422, "mode"),
        ({"json": {"documents": [{"id": str(i), "text": ""} for i in range(257)]}}, API_KEY, 413, "max_documents"),
        ({"json": {"documents": [{"id": "a", "text": "x" * 1_000_001}]}}, API_KEY, 413, "max_chars"),
        ({"content": b"x" * (8 * 2**20 + 1), "headers": {"Content-Type": "application/json"}}, API_KEY, 413, "max_body_bytes"),
    ],
)
def test_gateway_rejects_bad_requests_with_json_errors(server, request_kwargs, key, status, expected):
    headers = request_kwargs.get("headers", {}) | ({"X-API-Key": key} if key else {})
    response = httpx.post(f"{server.gateway_url}/v1/filter", timeout=60, **(request_kwargs | {"headers": headers}))
    assert response.status_code == status
    assert expected in response.json()["error"]


def test_gateway_health_models_metrics_and_openapi(server):
    url = server.gateway_url
    assert httpx.get(f"{url}/healthz").json() == {"status": "ok"}
    assert httpx.get(f"{url}/readyz").status_code == 200
    assert httpx.get(f"{url}/v1/models").status_code == 401
    models = httpx.get(f"{url}/v1/models", headers={"X-API-Key": API_KEY}).json()
    assert set(models["served"]) == set(WINDOW_MODELS)
    httpx.post(f"{url}/v1/filter", json={"documents": [{"id": "m", "text": "insulin"}]}, headers={"X-API-Key": API_KEY})
    metrics = httpx.get(f"{url}/metrics").text
    for name in ("tokfilter_requests_total", "tokfilter_documents_total", "tokfilter_tokens_total",
                 "tokfilter_request_seconds_bucket", "tokfilter_flagged_fraction_bucket", "tokfilter_requests_in_flight"):
        assert name in metrics
    assert 'route="/v1/filter",status="200"' in metrics
    assert "/v1/filter" in httpx.get(f"{url}/openapi.json").json()["paths"]
    assert "nv_inference_request_success" in httpx.get(server.metrics_url).text


def test_taken_port_is_a_clear_error(repo, tmp_path):
    ports = free_ports()
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", ports["grpc_port"]))
        busy.listen()
        with pytest.raises(TokfilterError, match=f"--grpc-port {ports['grpc_port']}"):
            with running_server(repo, log_dir=tmp_path, **ports):
                pass


def test_missing_model_file_is_a_clear_error(tmp_path):
    with pytest.raises(TokfilterError, match="model file missing: .*token_classifier/1/model.onnx"):
        with running_server(tmp_path, log_dir=tmp_path, **free_ports()):
            pass


def processes_mentioning(marker: str) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if marker in (entry / "cmdline").read_bytes().decode(errors="replace"):
                    pids.append(int(entry.name))
            except OSError:
                pass
    return pids


def test_serve_cli_stops_on_sigterm_without_orphans(tiny_models_dir, tmp_path):
    repo = tmp_path / "repo"  # its own, so that the module's server is not counted
    place_models(tiny_models_dir, repo)
    ports = free_ports()
    cmd = [sys.executable, "-m", "tokfilter.cli", "serve", "--repo", str(repo), "--ort-threads", "1"]
    cmd += [f"--{k.replace('_', '-')}={v}" for k, v in ports.items()]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output = []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        output.append(line)
        if "models ready" in line or not line:
            break
    assert "models ready" in output[-1], "".join(output)
    assert f"grpc://127.0.0.1:{ports['grpc_port']}" in "".join(output)
    assert processes_mentioning(str(repo.resolve()))  # tritonserver and its python stubs
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(60) == 0
    time.sleep(0.5)
    assert processes_mentioning(str(repo.resolve())) == []
    assert processes_mentioning(f"--port {ports['gateway_port']}") == []
