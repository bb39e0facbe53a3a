"""Every Triton port guarded: the model-repository and other admin APIs answer only the server's own
secret, on HTTP and gRPC, on loopback too; with an API key, so does inference (real server, real
clients). A refused key or another configuration error is never retried."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from tokfilter.clients.filter_client import API_KEY_HEADER, FilterClient, ServerError, key_headers
from tokfilter.server.model_repo import SERVED_MODELS, place_models
from tokfilter.server.serve import running_server
from tokfilter.server.triton import ADMIN_HEADER, free_port

API_KEY = "the-servers-key"
KEY_HEADERS = {"grpc": key_headers(API_KEY), "http": {API_KEY_HEADER: API_KEY}}
PWN_CONFIG = json.dumps({"name": "pwn", "backend": "python", "max_batch_size": 0,
                         "input": [{"name": "x", "data_type": "TYPE_FP32", "dims": [1]}],
                         "output": [{"name": "y", "data_type": "TYPE_FP32", "dims": [1]}]})


def pwn_model(marker: Path) -> bytes:
    """A python-backend model whose initialize writes ``marker`` on the host."""
    return (f"class TritonPythonModel:\n    def initialize(self, args):\n        open({str(marker)!r}, 'w').write('ran')\n"
            "    def execute(self, requests):\n        return []\n").encode()


@pytest.fixture(scope="module")
def server(tiny_models_dir, tmp_path_factory):
    repo = tmp_path_factory.mktemp("model_repo")
    place_models(tiny_models_dir, repo)
    ports = {"grpc_port": free_port(), "http_port": free_port(), "metrics_port": free_port(), "gateway_port": None}
    with running_server(repo, api_key=API_KEY, ort_threads=1, log_dir=tmp_path_factory.mktemp("logs"), **ports) as endpoints:
        yield endpoints


def clients(server) -> dict:
    return {"http": httpclient.InferenceServerClient(f"127.0.0.1:{server.http_port}"),
            "grpc": grpcclient.InferenceServerClient(f"127.0.0.1:{server.grpc_port}")}


@pytest.mark.parametrize("protocol", ["http", "grpc"])
@pytest.mark.parametrize("headers", [None, {ADMIN_HEADER: "guessed"}, {f"triton-grpc-protocol-{ADMIN_HEADER}": "guessed"},
                                     KEY_HEADERS["grpc"] | KEY_HEADERS["http"]])  # the API key opens no admin API
def test_model_repository_api_refused_without_the_servers_secret(server, tmp_path, protocol, headers):
    client = clients(server)[protocol]
    marker = tmp_path / "ran"
    admin_calls = {
        "load with a file override": lambda: client.load_model("pwn", headers=headers, config=PWN_CONFIG,
                                                               files={"file:1/model.py": pwn_model(marker)}),
        "unload": lambda: client.unload_model("token_classifier", headers=headers),
        "repository index": lambda: client.get_model_repository_index(headers=headers),
        "log settings": lambda: client.update_log_settings({"log_file": str(tmp_path / "log")}, headers=headers),
        "trace settings": lambda: client.update_trace_settings(settings={"trace_file": str(tmp_path / "trace")}, headers=headers),
    }
    for name, call in admin_calls.items():
        with pytest.raises(InferenceServerException, match="restricted") as refused:
            call()
        assert refused.value.status() in ("403", "StatusCode.UNAVAILABLE"), name
    assert not marker.exists() and not (tmp_path / "log").exists() and not (tmp_path / "trace").exists()
    for c in clients(server).values():  # nothing was loaded or unloaded
        assert not c.is_model_ready("pwn")
        assert all(c.is_model_ready(model) for model in SERVED_MODELS)


def infer_window(protocol: str, client, headers: dict | None = None) -> np.ndarray:
    lib = httpclient if protocol == "http" else grpcclient
    ids = np.array([[0, 5, 7]], dtype=np.int64)
    inputs = [lib.InferInput("input_ids", [1, 3], "INT64"), lib.InferInput("attention_mask", [1, 3], "INT64")]
    inputs[0].set_data_from_numpy(ids)
    inputs[1].set_data_from_numpy(np.ones_like(ids))
    return client.infer("token_classifier", inputs, headers=headers).as_numpy("forget_prob")


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_inference_needs_the_api_key_on_both_ports_and_health_stays_open(server, protocol):
    client = clients(server)[protocol]
    wrong = {"grpc": key_headers("wrong-key"), "http": {API_KEY_HEADER: "wrong-key"}}[protocol]
    for headers in (None, wrong):
        with pytest.raises(InferenceServerException, match="restricted"):
            infer_window(protocol, client, headers)
        with pytest.raises(InferenceServerException, match="restricted"):
            client.get_model_config("token_classifier", headers=headers)
    assert infer_window(protocol, client, KEY_HEADERS[protocol]).shape == (1, 3)
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("token_classifier")


def test_filter_client_sends_the_key_and_a_refused_key_is_not_retried(server, tiny_models_dir):
    with FilterClient(server.grpc_url, tiny_models_dir / "token_classifier", api_key=API_KEY) as client:
        assert client.filter(["Insulin lowers blood glucose."])[0].doc_score is not None
    for key in (None, "wrong-key"):
        start = time.monotonic()
        with pytest.raises(ServerError, match="restricted"):
            FilterClient(server.grpc_url, tiny_models_dir / "token_classifier", api_key=key, retry_deadline_s=30)
        assert time.monotonic() - start < 3


def test_filter_cli_takes_the_key_from_flag_or_environment(server, tiny_corpus_dir, tiny_models_dir, tmp_path):
    from tokfilter.training.pretrain.tokenizer import corpus_texts, train_target_tokenizer

    target = train_target_tokenizer(corpus_texts([str(tiny_corpus_dir / "test.jsonl")]), tmp_path / "tokenizer.json", vocab_size=400)
    cmd = [sys.executable, "-m", "tokfilter.cli", "filter", str(tiny_corpus_dir / "test.jsonl"), "--server", server.grpc_url,
           "--token-model", str(tiny_models_dir / "token_classifier"), "--doc-model", str(tiny_models_dir / "doc_classifier"),
           "--target-tokenizer", str(target), "--no-progress", "--retry-deadline", "30"]
    env = os.environ | {"TOKFILTER_API_KEY": API_KEY}
    ok = subprocess.run(cmd + ["--out", str(tmp_path / "ok")], env=env, capture_output=True, text=True, timeout=300)
    assert ok.returncode == 0, ok.stderr
    start = time.monotonic()
    refused = subprocess.run(cmd + ["--out", str(tmp_path / "refused"), "--api-key", "wrong-key"], env=env, capture_output=True,
                             text=True, timeout=300)
    assert refused.returncode == 2 and "restricted" in refused.stderr and "Traceback" not in refused.stderr, refused.stderr
    assert time.monotonic() - start < 20  # not the 30 s retry deadline
