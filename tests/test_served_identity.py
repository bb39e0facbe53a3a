"""The shard manifest records the model that actually scored the corpus: with ``--server``, the
identity the server publishes for the file it loaded (not the client's local export), the same for
the local and the Ray engine; ``--resume`` refuses a server that runs another model."""

import json
import shutil
from dataclasses import replace

import pytest
import ray
from hypothesis import given
from hypothesis import strategies as st

from tokfilter.clients.engines.local import FilterSettings, run_local
from tokfilter.clients.engines.ray import run_ray
from tokfilter.digest import file_sha256
from tokfilter.errors import TokfilterError
from tokfilter.identity import IDENTITY_FIELDS, identity_difference, identity_from_parameters, identity_parameters
from tokfilter.server.model_repo import ConfigOverrides, place_models, served_config
from tokfilter.server.serve import running_server
from tokfilter.server.triton import free_port, start_triton
from tokfilter.training.pretrain.tokenizer import corpus_texts, train_target_tokenizer

IDENTITY_KEYS = ("threshold", "settings", "target_tokenizer", "token_model", "doc_model")
LOCAL_THRESHOLD = 0.123  # the card at hand; the served card's differs


@pytest.fixture(scope="module")
def job(tiny_corpus_dir, tiny_models_dir, tmp_path_factory):
    """Settings whose local exports are a copy of the served ones with another card threshold
    (what a client holding a retrained model has), a 12-document input and a model repository."""
    tmp = tmp_path_factory.mktemp("identity")
    local = tmp / "local_models"
    shutil.copytree(tiny_models_dir, local)
    for model in ("token_classifier", "doc_classifier"):
        card_path = local / model / "tokfilter.json"
        card = json.loads(card_path.read_text())
        assert card["threshold"] != LOCAL_THRESHOLD
        card_path.write_text(json.dumps(card | {"threshold": LOCAL_THRESHOLD}))
    corpus = tmp / "docs.jsonl"
    corpus.write_text("".join((tiny_corpus_dir / "test.jsonl").read_text().splitlines(keepends=True)[:12]))
    tokenizer = train_target_tokenizer(corpus_texts([str(tiny_corpus_dir / "test.jsonl")]), tmp / "target.json", vocab_size=400)
    settings = FilterSettings(token_model=str(local / "token_classifier"), doc_model=str(local / "doc_classifier"),
                              target_tokenizer=str(tokenizer), buffer_docs=4, shard_tokens=2000, threads=1, max_in_flight=2)
    repo = tmp / "repo"
    place_models(tiny_models_dir, repo)
    return settings, [str(corpus)], repo


def serving(repo, precision, log_dir):
    return running_server(repo, precision=precision, ort_threads=1, log_dir=log_dir, grpc_port=free_port(),
                          http_port=free_port(), metrics_port=free_port(), gateway_port=None)


@pytest.mark.slow
def test_manifest_names_the_served_model_and_resume_refuses_another(job, tiny_models_dir, tmp_path):
    settings, inputs, repo = job
    served_card = json.loads((tiny_models_dir / "token_classifier" / "tokfilter.json").read_text())
    with serving(repo, "int8", tmp_path / "logs") as endpoints:
        served = replace(settings, server=endpoints.grpc_url)
        with pytest.raises(TokfilterError, match=r"--precision fp32: .* serves token_model at int8"):
            run_local(inputs, tmp_path / "asked_fp32", replace(served, precision="fp32"), show_progress=False)
        manifest = run_local(inputs, tmp_path / "local", served, show_progress=False)
        ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
        try:
            ray_manifest = run_ray(inputs, tmp_path / "ray", served, actors=1, show_progress=False, wave_buffers=2)
        finally:
            ray.shutdown()
    for model in ("token_classifier", "doc_classifier"):
        recorded = manifest["token_model" if model == "token_classifier" else "doc_model"]
        assert recorded["precision"] == "int8"
        assert recorded["onnx_sha256"] == file_sha256(tiny_models_dir / model / "model.int8.onnx")
        assert recorded["threshold"] == json.loads((tiny_models_dir / model / "tokfilter.json").read_text())["threshold"]
    assert manifest["threshold"] == served_card["threshold"]
    assert {k: ray_manifest[k] for k in IDENTITY_KEYS} == {k: manifest[k] for k in IDENTITY_KEYS}

    with serving(repo, "fp32", tmp_path / "logs") as endpoints:
        with pytest.raises(TokfilterError, match=r"--resume: token_model differs .*precision: 'int8' != 'fp32'"):
            run_local(inputs, tmp_path / "local", replace(settings, server=endpoints.grpc_url), resume=True, show_progress=False)
    # in process, the local export is what scores: its own identity, which a resume also refuses
    with pytest.raises(TokfilterError, match=r"--resume: .*differs"):
        run_local(inputs, tmp_path / "local", settings, resume=True, show_progress=False)


def test_the_served_model_refuses_to_load_files_other_than_its_published_identity(job, tmp_path):
    _, _, repo = job
    triton = start_triton(repo, "127.0.0.1", free_port(), free_port(), free_port(), tmp_path / "triton.log")
    try:
        config = json.loads(served_config(repo, "token_classifier", ConfigOverrides(ort_threads=1, precision="fp32")))
        published = config["parameters"]["onnx_sha256"]["string_value"]
        config["parameters"]["onnx_sha256"]["string_value"] = "0" * 64  # the file changed after the launcher read it
        with pytest.raises(TokfilterError, match=r"loaded model differs from the identity its config publishes \(onnx_sha256"):
            triton.load("token_classifier", json.dumps(config))
        config["parameters"]["onnx_sha256"]["string_value"] = published
        triton.load("token_classifier", json.dumps(config))
    finally:
        triton.stop()


identities = st.fixed_dictionaries({
    "model_name": st.text(min_size=1), "precision": st.sampled_from(["fp32", "int8"]),
    "onnx_sha256": st.text("0123456789abcdef", min_size=64, max_size=64),
    "threshold": st.floats(0, 1), "max_length": st.integers(2, 4096), "stride": st.integers(0, 4095),
    "tokenizer_sha256": st.text("0123456789abcdef", min_size=64, max_size=64),
})


@given(identities)
def test_identity_reads_back_from_config_parameters_exactly(identity):
    parameters = identity_parameters(identity)
    assert all(isinstance(v, str) for v in parameters.values())
    assert identity_from_parameters(parameters, "m") == identity
    assert identity_difference(identity, identity_from_parameters(parameters, "m")) is None


@given(identities, st.sampled_from(sorted(IDENTITY_FIELDS)))
def test_identity_difference_names_the_field(identity, field):
    changed = identity | {field: "other" if IDENTITY_FIELDS[field] is str else identity[field] + 1}
    assert identity_difference(identity, changed).startswith(f"{field}: ")


def test_configs_without_a_published_identity_and_incomplete_ones():
    assert identity_from_parameters({"precision": "fp32", "max_length": "64"}, "m") is None  # e.g. the native GPU configs
    with pytest.raises(TokfilterError, match="config m publishes an incomplete model identity: no .*stride"):
        identity_from_parameters({"onnx_sha256": "ab", "max_length": "64"}, "config m")
