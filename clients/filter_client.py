"""``FilterClient``: score documents on a running tokfilter Triton server over gRPC.

Tokenization, windowing and stitching run client-side in the shared pipeline
(``tokfilter.scoring``); only window batches travel. The worker count of a thread pool bounds the
requests in flight. The tokenizer comes from a local export of the token model; the server
publishes the identity of each model it runs (``tokfilter.identity``: model file digest, precision,
threshold, windowing, tokenizer digest), which ``identities`` holds, and a client whose tokenizer
differs is refused.

A request that fails because the server is briefly away (restarting, a model reloading after its
stub died: gRPC UNAVAILABLE, "not healthy", "not ready", unknown model) is retried with backoff on
a fresh connection until ``retry_deadline_s`` has passed, then fails with ``ServerError``; the
supervisor of ``tokfilter serve`` heals such faults well within the default deadline. Errors of
configuration (a refused API key, a different tokenizer, a bad argument) are never retried.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from tokfilter.digest import file_sha256
from tokfilter.errors import TokfilterError
from tokfilter.identity import identity_from_parameters
from tokfilter.inference import window_probabilities
from tokfilter.modelcard import JOINT_DOC_OUTPUT, config_parameters, load_model_card
from tokfilter.paths import JOINT_MODEL_DIR
from tokfilter.scoring import (
    DEFAULT_REQUEST_TOKENS,
    DocumentScores,
    ScoredModel,
    ScoringPipeline,
)
from tokfilter.windows import load_tokenizer

TOKEN_MODEL, DOC_MODEL = "token_classifier", "doc_classifier"
API_KEY_HEADER = "x-api-key"  # the header of the API key on Triton's ports and the gateway
DEFAULT_RETRY_DEADLINE_S = 60.0
# Messages of the faults a supervised server heals: a dead or restarting Triton, a model whose stub
# died or that is being reloaded.
TRANSIENT_MESSAGES = ("not healthy", "is not ready", "unknown model", "is not found", "no available versions", "unavailable",
                      "failed to connect", "connection refused", "connection reset", "socket closed", "rst_stream",
                      "stream removed", "broken pipe", "goaway")


class ServerError(TokfilterError):
    """The model server failed a request, or stayed away past the retry deadline."""


def key_headers(api_key: str | None) -> dict[str, str] | None:
    """gRPC metadata carrying the API key (Triton prefixes its restricted-protocol headers)."""
    return {f"triton-grpc-protocol-{API_KEY_HEADER}": api_key} if api_key else None


def is_transient(err: Exception) -> bool:
    """Whether a failed request may succeed once the server has healed."""
    message = str(err).lower()
    if "restricted" in message:  # a missing or wrong API key, which Triton answers with UNAVAILABLE
        return False
    return isinstance(err, OSError) or any(m in message for m in TRANSIENT_MESSAGES)


def retry_transient(call: Callable, deadline_s: float, where: str, on_retry: Callable[[], None] = lambda: None):
    """``call()``, retried with doubling pauses (0.1 to 2 s) while it fails transiently, for at most
    ``deadline_s``; any other server error is raised at once. Both come out as ``ServerError``."""
    from tritonclient.utils import InferenceServerException

    start, pause = time.monotonic(), 0.1
    while True:
        try:
            return call()
        except (InferenceServerException, OSError) as err:
            if not is_transient(err):
                raise ServerError(f"{where}: {err}") from err
            remaining = deadline_s - (time.monotonic() - start)
            if remaining <= 0:
                raise ServerError(f"{where}: the server did not recover within the retry deadline of {deadline_s:g} s: {err}") from err
            on_retry()
            time.sleep(min(pause, remaining))
            pause = min(2 * pause, 2.0)


def grpc_address(url: str) -> str:
    """``host:port`` of a ``grpc://host:port`` (or bare ``host:port``) URL."""
    address = url.removeprefix("grpc://")
    if "://" in address or ":" not in address:
        raise TokfilterError(f"server url must look like grpc://HOST:PORT, got {url!r}")
    return address


class TritonWindowScorer:
    """A window scorer that runs a model of the Triton server (one gRPC client per thread).

    Accepts both the python-backend models (output ``forget_prob``, and ``doc_forget_prob`` for a
    joint model: one call, both scores) and the native onnxruntime GPU configs (output ``logits``,
    turned into p(forget) by ``tokfilter.inference.window_probabilities``)."""

    def __init__(self, address: str, model: str, output: str, timeout: float | None = 120.0, api_key: str | None = None,
                 retry_deadline_s: float = DEFAULT_RETRY_DEADLINE_S, doc_output: str | None = None):
        self.address, self.model, self.output, self.doc_output, self.timeout = address, model, output, doc_output, timeout
        self.headers, self.retry_deadline_s = key_headers(api_key), retry_deadline_s
        self._local = threading.local()

    def _client(self):
        import tritonclient.grpc as grpcclient

        if not hasattr(self._local, "client"):
            self._local.client = grpcclient.InferenceServerClient(self.address)
        return self._local.client

    def _reconnect(self) -> None:
        """Drop this thread's connection: a fresh channel connects at once, where the old one may
        sit in gRPC's reconnect backoff (up to minutes) after its server went away."""
        self._local.__dict__.pop("client").close()

    def __call__(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        import tritonclient.grpc as grpcclient

        inputs = [grpcclient.InferInput("input_ids", list(input_ids.shape), "INT64"),
                  grpcclient.InferInput("attention_mask", list(attention_mask.shape), "INT64")]
        inputs[0].set_data_from_numpy(np.ascontiguousarray(input_ids, dtype=np.int64))
        inputs[1].set_data_from_numpy(np.ascontiguousarray(attention_mask, dtype=np.int64))
        names = [self.output] + ([self.doc_output] if self.doc_output else [])
        outputs = [grpcclient.InferRequestedOutput(name) for name in names]
        result = retry_transient(lambda: self._client().infer(self.model, inputs, outputs=outputs, client_timeout=self.timeout,
                                                               headers=self.headers),
                                 self.retry_deadline_s, f"Triton model {self.model!r} at grpc://{self.address}", self._reconnect)
        if self.output == "logits":
            return window_probabilities({"logits": result.as_numpy("logits")})
        token = result.as_numpy(self.output)
        return (token, result.as_numpy(self.doc_output).reshape(-1)) if self.doc_output else token


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
        model_dir: Path | str = JOINT_MODEL_DIR,
        max_in_flight: int = 8,
        max_batch_tokens: int = DEFAULT_REQUEST_TOKENS,
        use_doc_model: bool = True,
        timeout: float | None = 120.0,
        api_key: str | None = None,
        retry_deadline_s: float = DEFAULT_RETRY_DEADLINE_S,
    ):
        if max_in_flight < 1:
            raise TokfilterError(f"max_in_flight must be >= 1, got {max_in_flight}")
        if retry_deadline_s < 0:
            raise TokfilterError(f"retry_deadline_s must be >= 0, got {retry_deadline_s}")
        self.address = grpc_address(url)
        self.api_key, self.retry_deadline_s = api_key, retry_deadline_s
        model_dir = Path(model_dir)
        tokenizer_path = model_dir / "tokenizer.json"
        if not tokenizer_path.is_file():
            raise TokfilterError(f"tokenizer not found: {tokenizer_path} (pass model_dir= the exported token model)")
        self.server_models = self._served_models()
        digest = file_sha256(tokenizer_path)
        # a joint model served as token_classifier gives the document score in the same call
        self.joint = JOINT_DOC_OUTPUT in [o["name"] for o in self.server_models[TOKEN_MODEL]["output"]]
        served = [m for m in (TOKEN_MODEL, DOC_MODEL)
                  if m in self.server_models and (m == TOKEN_MODEL or (use_doc_model and not self.joint))]
        self.identities = {model: self._identity(model, model_dir, digest) for model in served}
        token, doc = self.identities[TOKEN_MODEL], self.identities.get(DOC_MODEL)
        self.model_name = token["model_name"]
        self._executor = ThreadPoolExecutor(max_in_flight, thread_name_prefix="tokfilter-client")
        token_scorer = self._scorer(TOKEN_MODEL, timeout, JOINT_DOC_OUTPUT if self.joint and use_doc_model else None)
        self.pipeline = ScoringPipeline(
            load_tokenizer(tokenizer_path),
            ScoredModel(token_scorer, token["max_length"], token["stride"], joint=token_scorer.doc_output is not None),
            token["threshold"],
            doc_model=ScoredModel(self._scorer(DOC_MODEL, timeout), doc["max_length"], doc["stride"]) if doc else None,
            max_batch_tokens=max_batch_tokens,
            executor=self._executor,
        )

    @property
    def threshold(self) -> float:
        return self.pipeline.threshold

    def _scorer(self, model: str, timeout: float | None, doc_output: str | None = None) -> TritonWindowScorer:
        output = self.server_models[model]["output"][0]["name"]
        return TritonWindowScorer(self.address, model, output, timeout, self.api_key, self.retry_deadline_s, doc_output)

    def _served_models(self) -> dict[str, dict]:
        """Configs of the window models the server has ready; a server that is starting or
        healing is waited for up to the retry deadline."""
        return retry_transient(self._read_served_models, self.retry_deadline_s, f"Triton at grpc://{self.address}")

    def _read_served_models(self) -> dict[str, dict]:
        import tritonclient.grpc as grpcclient
        from tritonclient.utils import InferenceServerException

        client = grpcclient.InferenceServerClient(self.address)
        headers = key_headers(self.api_key)
        try:
            if not client.is_server_ready():
                raise InferenceServerException("the server is not ready")
            ready = {model: client.get_model_config(model, as_json=True, headers=headers)["config"]
                     for model in (TOKEN_MODEL, DOC_MODEL) if client.is_model_ready(model)}
        finally:
            client.close()
        if TOKEN_MODEL not in ready:
            raise InferenceServerException(f"model {TOKEN_MODEL!r} is not ready")
        return ready

    def _identity(self, model: str, model_dir: Path, tokenizer_digest: str) -> dict:
        """The identity the server publishes for ``model``. A config that publishes none (the
        native GPU backend) gets the local card's windowing and threshold, and no precision or
        model file digest (the server did not say what it runs)."""
        identity = identity_from_parameters(config_parameters(self.server_models[model]), f"model {model!r} on grpc://{self.address}")
        if identity is None:
            card = load_model_card(model_dir.parent / model if model != TOKEN_MODEL else model_dir)
            return {"model_name": card.name, "precision": None, "onnx_sha256": None, "threshold": card.threshold,
                    "max_length": card.max_length, "stride": card.stride, "tokenizer_sha256": tokenizer_digest}
        if identity["tokenizer_sha256"] != tokenizer_digest:
            raise TokfilterError(f"the tokenizer in {model_dir} differs from the one served for {model!r}; "
                                 "pass model_dir= the export the server runs")
        return identity

    def filter(self, texts: Sequence[str], threshold: float | None = None) -> list[DocumentScores]:
        """Scores of each text; spans use ``threshold`` (default: the served model's)."""
        return self.pipeline.score(list(texts), threshold)

    def close(self) -> None:
        self._executor.shutdown(wait=True)

    def __enter__(self) -> "FilterClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
