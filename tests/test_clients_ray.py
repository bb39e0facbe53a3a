"""`--engine ray` on a local Ray instance writes the same bytes as the local engine."""

from dataclasses import replace

import ray

from tokfilter.clients.engines.local import FilterSettings, run_local
from tokfilter.clients.engines.ray import run_ray
from tokfilter.training.pretrain.tokenizer import corpus_texts, train_target_tokenizer


def test_ray_engine_matches_the_local_engine(tiny_corpus_dir, tiny_models_dir, tiny_joint_model_dir, tmp_path):
    """Byte-equal shards with the two models, and with the joint model (one pass, both scores)."""
    tokenizer = train_target_tokenizer(corpus_texts([str(tiny_corpus_dir / "test.jsonl")]), tmp_path / "tok.json", 400)
    settings = FilterSettings(token_model=str(tiny_models_dir / "token_classifier"),
                              doc_model=str(tiny_models_dir / "doc_classifier"), target_tokenizer=str(tokenizer),
                              buffer_docs=4, shard_tokens=3000, threads=1)
    inputs = [str(tiny_corpus_dir / "test.jsonl"), str(tiny_corpus_dir / "validation.jsonl")]
    joint = replace(settings, token_model=str(tiny_joint_model_dir))
    run_local(inputs, tmp_path / "local", settings, show_progress=False)
    run_local(inputs[:1], tmp_path / "local_joint", joint, show_progress=False)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        manifest = run_ray(inputs, tmp_path / "ray", settings, actors=2, show_progress=False, wave_buffers=3)
        joint_manifest = run_ray(inputs[:1], tmp_path / "ray_joint", joint, actors=2, show_progress=False, wave_buffers=3)
    finally:
        ray.shutdown()
    assert manifest["complete"] and len(manifest["shards"]) > 1
    assert joint_manifest["complete"] and joint_manifest["token_model"] == joint_manifest["doc_model"]
    for local, remote in (("local", "ray"), ("local_joint", "ray_joint")):
        expected = {p.name: p.read_bytes() for p in (tmp_path / local).iterdir()}
        assert {p.name: p.read_bytes() for p in (tmp_path / remote).iterdir()} == expected
