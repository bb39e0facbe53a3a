"""Every Triton port guarded: the model-repository and other admin APIs answer only the server's own
secret, on HTTP and gRPC, on loopback too (real server, real clients)."""

import json
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from tokfilter.server.model_repo import SERVED_MODELS, place_models
from tokfilter.server.serve import running_server
from tokfilter.server.triton import ADMIN_HEADER, free_port

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
    with running_server(repo, ort_threads=1, log_dir=tmp_path_factory.mktemp("logs"), **ports) as endpoints:
        yield endpoints


def clients(server) -> dict:
    return {"http": httpclient.InferenceServerClient(f"127.0.0.1:{server.http_port}"),
            "grpc": grpcclient.InferenceServerClient(f"127.0.0.1:{server.grpc_port}")}


@pytest.mark.parametrize("protocol", ["http", "grpc"])
@pytest.mark.parametrize("headers", [None, {ADMIN_HEADER: "guessed"}, {f"triton-grpc-protocol-{ADMIN_HEADER}": "guessed"}])
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


def test_inference_health_and_configs_stay_open_without_an_api_key(server):
    for protocol, c in clients(server).items():
        assert c.is_server_live() and c.is_server_ready()
        assert infer_window(protocol, c).shape == (1, 3)
        assert c.get_model_metadata("token_classifier", **({"as_json": True} if protocol == "grpc" else {}))["name"] == "token_classifier"
