"""`--engine ray` on a local Ray instance writes the same bytes as the local engine."""

import ray

from tokfilter.clients.engines.local import FilterSettings, run_local
from tokfilter.clients.engines.ray import run_ray
from tokfilter.training.pretrain.tokenizer import corpus_texts, train_target_tokenizer


def test_ray_engine_matches_the_local_engine(tiny_corpus_dir, tiny_models_dir, tmp_path):
    tokenizer = train_target_tokenizer(corpus_texts([str(tiny_corpus_dir / "test.jsonl")]), tmp_path / "tok.json", 400)
    settings = FilterSettings(token_model=str(tiny_models_dir / "token_classifier"),
                              doc_model=str(tiny_models_dir / "doc_classifier"), target_tokenizer=str(tokenizer),
                              buffer_docs=4, shard_tokens=3000, threads=1)
    inputs = [str(tiny_corpus_dir / "test.jsonl"), str(tiny_corpus_dir / "validation.jsonl")]
    run_local(inputs, tmp_path / "local", settings, show_progress=False)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        manifest = run_ray(inputs, tmp_path / "ray", settings, actors=2, show_progress=False, wave_buffers=3)
    finally:
        ray.shutdown()
    assert manifest["complete"] and len(manifest["shards"]) > 1
    local = {p.name: p.read_bytes() for p in (tmp_path / "local").iterdir()}
    assert {p.name: p.read_bytes() for p in (tmp_path / "ray").iterdir()} == local
