"""``tokfilter.json``: what a served model needs besides its weights (threshold, windowing, labels)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tokfilter.errors import TokfilterError

CARD_FILE = "tokfilter.json"
# The served window-score output of a joint model, beside its per-token ``forget_prob``, from one run.
JOINT_DOC_OUTPUT = "doc_forget_prob"


@dataclass
class ModelCard:
    """Metadata saved next to ``model.onnx``.

    ``output`` says what the ONNX graph returns: ``"logits"`` of shape [batch, seq, 2] for the token
    model and [batch, 2] for the document model; a joint model (``task`` "joint": one encoder, both
    heads) returns ``"logits"`` [batch, seq, 2] and ``"doc_logits"`` [batch, 2]. Class 1
    (``labels[1]``) is the forget domain. ``threshold`` and ``threshold_recall95`` belong to the
    model's own head (the token head of a joint model); ``doc_threshold`` and
    ``doc_threshold_recall95`` to a joint model's document head (None otherwise).
    ``max_length`` counts the special tokens; ``stride`` is the overlap, in tokens, between
    consecutive windows of a long document.
    """

    name: str
    task: str  # "token", "document" or "joint"
    labels: list[str]
    output: str
    max_length: int
    stride: int
    threshold: float
    threshold_recall95: float
    metrics: dict = field(default_factory=dict)
    data_digest: str = ""
    encoder: str = ""
    num_layers: int = 0
    extra: dict = field(default_factory=dict)
    doc_threshold: float | None = None
    doc_threshold_recall95: float | None = None

    @property
    def joint(self) -> bool:
        """Whether one pass of this model gives both token and document scores."""
        return self.task == "joint"

    def save(self, model_dir: Path) -> Path:
        path = Path(model_dir) / CARD_FILE
        path.write_text(json.dumps(asdict(self), indent=2, sort_keys=True) + "\n")
        return path


def load_model_card(model_dir: Path | str) -> ModelCard:
    path = Path(model_dir) / CARD_FILE
    if not path.is_file():
        raise TokfilterError(f"model card not found: {path} (run `tokfilter train-classifier` first)")
    try:
        data = json.loads(path.read_text())
        return ModelCard(**data)
    except (json.JSONDecodeError, TypeError) as err:
        raise TokfilterError(f"model card {path} is not valid: {err}") from err


def config_parameters(config: dict) -> dict[str, str]:
    """The string parameters of a model config in Triton's JSON form, where the server publishes a
    served model's card fields; an empty value has no ``string_value`` key there (protobuf JSON
    leaves out defaults)."""
    return {k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()}
