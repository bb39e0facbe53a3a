"""`tokfilter serve --engine/--engine-precision`: the asked-for engine reaches the real Triton's
models, which say in the server log what they run; bad values are refused before anything starts."""

import json
import re
import subprocess
import sys

import numpy as np
import pytest

from tokfilter.clients import FilterClient
from tokfilter.errors import TokfilterError
from tokfilter.scoring import ScoringPipeline
from tokfilter.server.model_repo import WINDOW_MODELS, ConfigOverrides, place_models, served_config
from tokfilter.server.serve import running_server
from tokfilter.server.triton import free_port

TEXTS = ["The patient was given insulin for type 2 diabetes; the dose was raised after a week. " * 8,
         "Mitochondria make ATP in the cell."]


@pytest.fixture(scope="module")
def repo(tiny_models_dir, tmp_path_factory):
    repo = tmp_path_factory.mktemp("engine_repo")
    place_models(tiny_models_dir, repo, joint=False)
    return repo


@pytest.mark.parametrize("overrides, message", [
    ({"engine": "tensorrt"}, r"--engine must be one of auto, onnxruntime, openvino, torch, got 'tensorrt'"),
    ({"engine": "onnxruntime", "engine_precision": "bf16"}, r"--engine-precision must be one of fp32 for engine onnxruntime, got 'bf16'"),
    ({"engine_precision": "int8"}, r"--engine-precision .* got 'int8' \(int8: --precision int8\)"),
    ({"instances": 0}, r"--instances must be >= 1, got 0"),
])
def test_overrides_refuse_what_no_engine_runs(overrides, message):
    with pytest.raises(TokfilterError, match=message):
        ConfigOverrides(**overrides)


def test_served_config_carries_the_engine_to_every_model_that_runs_one(repo):
    for model in (*WINDOW_MODELS, "filter_text"):
        parameters = json.loads(served_config(repo, model, ConfigOverrides(engine="torch", engine_precision="bf16")))["parameters"]
        assert (parameters["engine"]["string_value"], parameters["engine_precision"]["string_value"]) == ("torch", "bf16")
    untouched = json.loads(served_config(repo, "token_classifier"))["parameters"]
    assert (untouched["engine"]["string_value"], untouched["engine_precision"].get("string_value", "")) == ("auto", "")  # JSON drops ""


def test_serve_runs_the_asked_for_engine(repo, tiny_models_dir, tmp_path):
    ports = {"grpc_port": free_port(), "http_port": free_port(), "metrics_port": free_port()}
    with running_server(repo, ort_threads=1, engine="torch", gateway_port=None, log_dir=tmp_path, **ports) as endpoints:
        with FilterClient(endpoints.grpc_url, tiny_models_dir / "token_classifier") as client:
            remote = client.filter(TEXTS)
    log = (tmp_path / f"triton-{ports['grpc_port']}.log").read_text()
    engines = set(re.findall(r"\[engine\] (\S+): (\w+ \w+) \((.*)\)", log))
    assert {(name, engine) for name, engine, _ in engines} >= {("token_classifier", "torch fp32"), ("doc_classifier", "torch fp32")}, log[-2000:]
    local = ScoringPipeline.from_model_dirs(tiny_models_dir / "token_classifier", tiny_models_dir / "doc_classifier").score(TEXTS)
    for r, l in zip(remote, local):  # torch rebuilt from the same weights: fp32 rounding apart from ONNX Runtime
        np.testing.assert_allclose(r.token_probs, l.token_probs, atol=1e-4)
        assert r.doc_score == pytest.approx(l.doc_score, abs=1e-4)


def test_serve_cli_names_the_bad_engine_precision_and_starts_nothing(repo):
    done = subprocess.run([sys.executable, "-m", "tokfilter.cli", "serve", "--repo", str(repo), "--engine", "onnxruntime",
                           "--engine-precision", "fp16", "--grpc-port", str(free_port())], capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    assert "--engine-precision must be one of fp32 for engine onnxruntime, got 'fp16'" in done.stderr
