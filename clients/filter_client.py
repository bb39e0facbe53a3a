"""``FilterClient``: score documents on a running tokfilter Triton server over gRPC.

Tokenization, windowing and stitching run client-side in the shared pipeline
(``tokfilter.scoring``); only window batches travel. The worker count of a thread pool bounds the
requests in flight. The tokenizer comes from a local export of the token model; the server
publishes the windowing, threshold and tokenizer digest of the model it runs, and a client whose
tokenizer differs is refused.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from tokfilter.digest import file_sha256
from tokfilter.errors import TokfilterError
from tokfilter.inference import forget_probability
from tokfilter.modelcard import config_parameters, load_model_card
from tokfilter.paths import TOKEN_MODEL_DIR
from tokfilter.scoring import (
    DEFAULT_REQUEST_TOKENS,
    DocumentScores,
    ScoredModel,
    ScoringPipeline,
)
from tokfilter.windows import load_tokenizer

TOKEN_MODEL, DOC_MODEL = "token_classifier", "doc_classifier"


def grpc_address(url: str) -> str:
    """``host:port`` of a ``grpc://host:port`` (or bare ``host:port``) URL."""
    address = url.removeprefix("grpc://")
    if "://" in address or ":" not in address:
        raise TokfilterError(f"server url must look like grpc://HOST:PORT, got {url!r}")
    return address


class TritonWindowScorer:
    """A window scorer that runs a model of the Triton server (one gRPC client per thread).

    Accepts both the python-backend models (output ``forget_prob``) and the native onnxruntime
    GPU configs (output ``logits``, turned into p(forget) here)."""

    def __init__(self, address: str, model: str, output: str, timeout: float | None = 120.0):
        self.address, self.model, self.output, self.timeout = address, model, output, timeout
        self._local = threading.local()

    def _client(self):
        import tritonclient.grpc as grpcclient

        if not hasattr(self._local, "client"):
            self._local.client = grpcclient.InferenceServerClient(self.address)
        return self._local.client

    def __call__(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        import tritonclient.grpc as grpcclient

        inputs = [grpcclient.InferInput("input_ids", list(input_ids.shape), "INT64"),
                  grpcclient.InferInput("attention_mask", list(attention_mask.shape), "INT64")]
        inputs[0].set_data_from_numpy(np.ascontiguousarray(input_ids, dtype=np.int64))
        inputs[1].set_data_from_numpy(np.ascontiguousarray(attention_mask, dtype=np.int64))
        result = self._client().infer(self.model, inputs, outputs=[grpcclient.InferRequestedOutput(self.output)],
                                      client_timeout=self.timeout)
        out = result.as_numpy(self.output)
        return forget_probability(out) if self.output == "logits" else out


class FilterClient:
    """Per-document scores (doc score, spans, per-token probabilities with character offsets) from
    a tokfilter Triton server.

    >>> with FilterClient("grpc://127.0.0.1:8001") as client:
    ...     results = client.filter(["Insulin lowers blood glucose."])

    ``max_batch_tokens`` bounds the padded tokens of one request; the server regroups the windows
    of the requests it holds into model calls of its own budget.
    """

    def __init__(
        self,
        url: str = "grpc://127.0.0.1:8001",
        model_dir: Path | str = TOKEN_MODEL_DIR,
        max_in_flight: int = 8,
        max_batch_tokens: int = DEFAULT_REQUEST_TOKENS,
        use_doc_model: bool = True,
        timeout: float | None = 120.0,
    ):
        if max_in_flight < 1:
            raise TokfilterError(f"max_in_flight must be >= 1, got {max_in_flight}")
        self.address = grpc_address(url)
        model_dir = Path(model_dir)
        tokenizer_path = model_dir / "tokenizer.json"
        if not tokenizer_path.is_file():
            raise TokfilterError(f"tokenizer not found: {tokenizer_path} (pass model_dir= the exported token model)")
        self.server_models = self._served_models()
        token = self._windowing(TOKEN_MODEL, model_dir, file_sha256(tokenizer_path))
        doc = self._windowing(DOC_MODEL, model_dir, file_sha256(tokenizer_path)) if use_doc_model and DOC_MODEL in self.server_models else None
        self.model_name = token["model_name"]
        self._executor = ThreadPoolExecutor(max_in_flight, thread_name_prefix="tokfilter-client")
        self.pipeline = ScoringPipeline(
            load_tokenizer(tokenizer_path),
            ScoredModel(TritonWindowScorer(self.address, TOKEN_MODEL, token["output"], timeout), token["max_length"], token["stride"]),
            token["threshold"],
            doc_model=ScoredModel(TritonWindowScorer(self.address, DOC_MODEL, doc["output"], timeout), doc["max_length"], doc["stride"]) if doc else None,
            max_batch_tokens=max_batch_tokens,
            executor=self._executor,
        )

    @property
    def threshold(self) -> float:
        return self.pipeline.threshold

    def _served_models(self) -> dict[str, dict]:
        import tritonclient.grpc as grpcclient
        from tritonclient.utils import InferenceServerException

        client = grpcclient.InferenceServerClient(self.address)
        try:
            if not client.is_server_ready():
                raise TokfilterError(f"Triton at {self.address} is not ready")
            ready = {}
            for model in (TOKEN_MODEL, DOC_MODEL):
                if client.is_model_ready(model):
                    ready[model] = client.get_model_config(model, as_json=True)["config"]
        except InferenceServerException as err:
            raise TokfilterError(f"cannot reach Triton at grpc://{self.address}: {err}") from err
        finally:
            client.close()
        if TOKEN_MODEL not in ready:
            raise TokfilterError(f"model {TOKEN_MODEL!r} is not ready on grpc://{self.address}")
        return ready

    def _windowing(self, model: str, model_dir: Path, tokenizer_digest: str) -> dict:
        """Windowing and threshold the server publishes for ``model`` (else the local card's)."""
        config = self.server_models[model]
        params = config_parameters(config)
        output = config["output"][0]["name"]
        if "max_length" not in params:  # a config without published parameters (native GPU backend)
            card = load_model_card(model_dir.parent / model if model != TOKEN_MODEL else model_dir)
            return {"max_length": card.max_length, "stride": card.stride, "threshold": card.threshold,
                    "model_name": card.name, "output": output}
        if params["tokenizer_sha256"] != tokenizer_digest:
            raise TokfilterError(f"the tokenizer in {model_dir} differs from the one served for {model!r}; "
                                 "pass model_dir= the export the server runs")
        return {"max_length": int(params["max_length"]), "stride": int(params["stride"]),
                "threshold": float(params["threshold"]), "model_name": params["model_name"], "output": output}

    def filter(self, texts: Sequence[str], threshold: float | None = None) -> list[DocumentScores]:
        """Scores of each text; spans use ``threshold`` (default: the served model's)."""
        return self.pipeline.score(list(texts), threshold)

    def close(self) -> None:
        self._executor.shutdown(wait=True)

    def __enter__(self) -> "FilterClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
