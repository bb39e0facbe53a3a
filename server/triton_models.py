"""Python-backend models of the Triton repository (imported by ``model_repo/*/1/model.py``).

``token_classifier`` / ``doc_classifier``: window batches in, p(forget) out. The dynamic batcher
hands over several requests at once, of different widths (ragged batching). Their windows are
pooled, cut at their last attended token, regrouped by length into sub-batches of at most
``max_batch_tokens`` padded tokens (``tokfilter.scoring.score_window_requests``), scored, and put
back per request. Without the regrouping, 32 requests in flight were merged into one 256-window call
whose attention scores alone take ~0.8 GB per layer: slower per token on a CPU than small batches.
``filter_text``: raw texts in, JSON spans out, through the shared scoring pipeline.

A joint model (one encoder, token and document heads; ``tokfilter model-repo`` places it in
both slots) serves from ``token_classifier`` both ``forget_prob`` and ``doc_forget_prob`` from one
run per sub-batch, and from ``doc_classifier`` its document head; ``filter_text`` runs it once.

Config parameters: ``precision`` (the model file: fp32|int8, published in the model identity),
``engine`` (auto|onnxruntime|openvino|torch, ``tokfilter.engines``; empty: auto), ``engine_precision``
(what the engine runs the fp32 file at: fp32|bf16|fp16; empty: the engine's), ``ort_threads``
(threads of any engine, 0 = all cores) and
``max_batch_tokens`` (padded tokens per ONNX Runtime call; empty: 1024 on a CPU, 32768 on a GPU,
``tokfilter.scoring.max_batch_tokens_for``). The environment variable ``TOKFILTER_ORT_THREADS``
overrides ``ort_threads``; ``TOKFILTER_DEVICE`` (cpu|cuda) picks the device; ``TOKFILTER_ENGINE`` what ``auto``
runs. Each model logs the engine and precision it runs (``[engine] ...`` in the server log).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

from tokfilter.engines import engine_line, make_window_scorer
from tokfilter.errors import TokfilterError
from tokfilter.identity import identity_difference, identity_from_parameters, model_identity
from tokfilter.inference import served_device
from tokfilter.modelcard import config_parameters, load_model_card
from tokfilter.scoring import ScoringPipeline, max_batch_tokens_for, score_window_requests


def scorer_factory(parameters: dict, device: str):
    """Builds window scorers on ``device`` with the engine, precision and threads the config asks for,
    and says in the server log which engine and precision each runs."""
    engine = parameters.get("engine") or "auto"
    precision = "int8" if parameters.get("precision") == "int8" else parameters.get("engine_precision") or None
    threads = int(os.environ.get("TOKFILTER_ORT_THREADS") or parameters.get("ort_threads", "0")) or None

    def make_scorer(model_dir: Path):
        scorer = make_window_scorer(model_dir, engine, precision, threads=threads, device=device)
        print(f"[engine] {engine_line(scorer)}", flush=True)
        return scorer

    return make_scorer


def check_loaded_identity(name: str, model_dir: Path, parameters: dict) -> None:
    """Refuse to serve files other than those whose identity the config publishes to clients (the
    launcher computed it before the load; a model file replaced in between would be misnamed)."""
    published = identity_from_parameters(parameters, f"config of {name!r}")
    if published is None:
        return
    difference = identity_difference(published, model_identity(model_dir, published["precision"]))
    if difference:
        raise TokfilterError(f"{name}: the loaded model differs from the identity its config publishes ({difference})")


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        config = json.loads(args["model_config"])
        self.name = config["name"]
        parameters = config_parameters(config)
        device = served_device()
        make_scorer = scorer_factory(parameters, device)
        max_batch_tokens = int(parameters.get("max_batch_tokens") or max_batch_tokens_for(device))
        repo = Path(args["model_repository"]).parent  # model_repository is this model's own folder
        version = args["model_version"]
        if self.name == "filter_text":
            self.pipeline = ScoringPipeline.from_model_dirs(
                repo / "token_classifier" / version, repo / "doc_classifier" / version, make_scorer=make_scorer,
                max_batch_tokens=max_batch_tokens,
            )
        else:
            self.scorer = make_scorer(repo / self.name / version)
            check_loaded_identity(self.name, repo / self.name / version, parameters)
            self.outputs = [o["name"] for o in config["output"]]
            self.per_token = [int(d) for d in config["output"][0]["dims"]] == [-1]  # [-1]: per position; [1]: per window
            self.joint = len(self.outputs) == 2  # token_classifier of a joint model: both heads
            if load_model_card(repo / self.name / version).joint and not self.joint:  # doc_classifier of a joint model
                joint_scorer = self.scorer
                self.scorer = lambda ids, mask: joint_scorer(ids, mask)[1]
            self.max_batch_tokens = max_batch_tokens

    def execute(self, requests: list) -> list:
        if self.name == "filter_text":
            return self._filter_text(requests)
        ids = [pb_utils.get_input_tensor_by_name(r, "input_ids").as_numpy() for r in requests]
        masks = [pb_utils.get_input_tensor_by_name(r, "attention_mask").as_numpy() for r in requests]
        outputs = score_window_requests(self.scorer, ids, masks, self.per_token, self.max_batch_tokens, self.joint)
        return [pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(name, out) for name, out in zip(self.outputs, outs)])
                for outs in (outputs if self.joint else [(out,) for out in outputs])]

    def _filter_text(self, requests: list) -> list:
        texts, counts = [], []
        for r in requests:
            raw = pb_utils.get_input_tensor_by_name(r, "text").as_numpy().reshape(-1)
            texts += [t.decode("utf-8", "replace") if isinstance(t, bytes) else str(t) for t in raw]
            counts.append(len(raw))
        results = iter(self.pipeline.score(texts))
        responses = []
        for n in counts:
            out = np.array([[json.dumps(next(results).summary()).encode()] for _ in range(n)], dtype=np.object_)
            responses.append(pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor("result", out)]))
        return responses

