"""``tokfilter filter --engine ray``: the filter's steps as a Ray Data pipeline.

read (the driver reads inputs into the same buffers as the local engine) -> tokenize, infer,
project (``ChunkFilter`` inside a pool of Ray actors: ONNX Runtime in the actor, or a Triton
endpoint, buffers dealt round-robin over several endpoints) -> write (the driver appends results in
input order with the same ``ShardWriter``). Buffers go through Ray in waves of ``wave_buffers`` so the
driver holds a bounded amount of text; shards, manifest and ``--resume`` are those of the local
engine, byte for byte.
"""

from __future__ import annotations

import pickle
from dataclasses import asdict
from pathlib import Path

import numpy as np

from tokfilter.clients.engines.local import (
    ChunkFilter,
    FilteredDoc,
    FilterSettings,
    buffer_texts,
    prepare_output,
    scoring_models,
    write_run,
)
from tokfilter.clients.projection import TargetTokenizer
from tokfilter.errors import TokfilterError


class FilterActor:
    """A Ray Data actor: one ``ChunkFilter`` per endpoint it is handed (or one in-process), each
    checked to run the ``models`` the driver recorded."""

    def __init__(self, settings: dict, models: dict):
        self.settings, self.models = FilterSettings(**settings), models
        self.filters: dict[str, ChunkFilter] = {}

    def __call__(self, batch: dict) -> dict:
        out = []
        for texts, server in zip(batch["texts"], batch["server"]):
            if server not in self.filters:
                self.filters[server] = ChunkFilter(self.settings, self.models, server=server or None)
            docs = self.filters[server]([str(t) for t in texts])
            out.append(pickle.dumps([asdict(d) for d in docs]))
        return {"index": batch["index"], "docs": np.array(out, dtype=object)}


def run_ray(inputs: list[str], out_dir: Path, settings: FilterSettings, resume: bool = False,
            address: str | None = None, actors: int = 1, show_progress: bool = True, wave_buffers: int = 64) -> dict:
    """Filter ``inputs`` into shards in ``out_dir`` on Ray; returns the final manifest."""
    import ray
    import ray.data

    settings.validate()
    if actors < 1:
        raise TokfilterError(f"--ray-actors must be >= 1, got {actors}")
    out_dir = Path(out_dir)
    target = TargetTokenizer(settings.target_tokenizer)
    models = scoring_models(settings)
    manifest = prepare_output(inputs, out_dir, settings, target, models, resume)
    if manifest["complete"]:
        return manifest
    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, log_to_driver=False)
    servers = settings.server.split(",") if settings.server else [""]

    def filter_buffers(buffers):
        n_buffers = 0
        while wave := [b for _, b in zip(range(wave_buffers), buffers)]:
            rows = [{"index": n_buffers + i, "server": servers[(n_buffers + i) % len(servers)], "texts": buffer_texts(chunk)}
                    for i, chunk in enumerate(wave)]
            n_buffers += len(wave)
            results = (
                ray.data.from_items(rows)
                .map_batches(FilterActor, fn_constructor_kwargs={"settings": asdict(settings), "models": models}, batch_size=1,
                             concurrency=actors, num_cpus=1)
                .take_all()
            )
            by_index = {int(r["index"]): [FilteredDoc(**d) for d in pickle.loads(r["docs"])] for r in results}
            for row, chunk in zip(rows, wave):
                yield chunk, by_index[row["index"]]

    return write_run(inputs, out_dir, manifest, settings, show_progress, filter_buffers)
