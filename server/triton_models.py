"""Python-backend models of the Triton repository (imported by ``model_repo/*/1/model.py``).

``token_classifier`` / ``doc_classifier``: window batches in, p(forget) out. Requests of different
sequence lengths arrive together (ragged batching); they are right-padded to the longest, scored in
one ONNX Runtime call and cut back per request. ``filter_text``: raw texts in, JSON spans out,
through the shared scoring pipeline.

Config parameters: ``precision`` (fp32|int8) and ``ort_threads`` (0 = all cores); the environment
variables ``TOKFILTER_ORT_THREADS`` and ``TOKFILTER_DEVICE`` (cpu|cuda) override them.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

from tokfilter.inference import OnnxWindowScorer
from tokfilter.scoring import ScoringPipeline


def scorer_factory(parameters: dict):
    """Builds OnnxWindowScorers with the precision, threads and device the config asks for."""
    precision = parameters.get("precision", "fp32")
    threads = int(os.environ.get("TOKFILTER_ORT_THREADS") or parameters.get("ort_threads", "0")) or None
    device = os.environ.get("TOKFILTER_DEVICE") or default_device()
    return lambda model_dir: OnnxWindowScorer(model_dir, precision=precision, threads=threads, device=device)


def default_device() -> str:
    import onnxruntime as ort

    return "cuda" if "CUDAExecutionProvider" in ort.get_available_providers() else "cpu"


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        config = json.loads(args["model_config"])
        self.name = config["name"]
        parameters = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        make_scorer = scorer_factory(parameters)
        repo = Path(args["model_repository"]).parent  # model_repository is this model's own folder
        version = args["model_version"]
        if self.name == "filter_text":
            self.pipeline = ScoringPipeline.from_model_dirs(
                repo / "token_classifier" / version, repo / "doc_classifier" / version, make_scorer=make_scorer
            )
        else:
            self.scorer = make_scorer(repo / self.name / version)
            self.output = config["output"][0]["name"]

    def execute(self, requests: list) -> list:
        if self.name == "filter_text":
            return self._filter_text(requests)
        ids = [pb_utils.get_input_tensor_by_name(r, "input_ids").as_numpy() for r in requests]
        masks = [pb_utils.get_input_tensor_by_name(r, "attention_mask").as_numpy() for r in requests]
        width = max(a.shape[1] for a in ids)
        padded_ids = np.concatenate([np.pad(a, ((0, 0), (0, width - a.shape[1]))) for a in ids])
        padded_masks = np.concatenate([np.pad(m, ((0, 0), (0, width - m.shape[1]))) for m in masks])
        probs = self.scorer(padded_ids, padded_masks)
        responses, row = [], 0
        for a in ids:
            part = probs[row : row + a.shape[0]]
            row += a.shape[0]
            out = part[:, : a.shape[1]] if part.ndim == 2 else part[:, None]
            responses.append(pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(self.output, np.array(out, dtype=np.float32, copy=True))]))
        return responses

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
