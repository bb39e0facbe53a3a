"""The identity of a scoring model: what a shard manifest records and ``--resume`` compares.

A classifier export can run in two precisions, be retrained with the same tokenizer, or be served
by a Triton server whose files the client never sees. Its identity names what actually scores:
the ONNX file (sha256) for the precision that runs, the threshold, the windowing and the tokenizer.
The server computes it from the files it loads and publishes it as model config parameters
(``tokfilter.server.model_repo.served_config``); an in-process run computes it from its export with
the same function, so both engines and both paths record the same fields.
"""

from __future__ import annotations

from pathlib import Path

from tokfilter.digest import file_sha256
from tokfilter.errors import TokfilterError
from tokfilter.inference import MODEL_FILES
from tokfilter.modelcard import load_model_card

# field -> type; the config parameters that carry them have the same names
IDENTITY_FIELDS: dict[str, type] = {
    "model_name": str,
    "precision": str,
    "onnx_sha256": str,
    "threshold": float,
    "max_length": int,
    "stride": int,
    "tokenizer_sha256": str,
}


def model_identity(model_dir: Path | str, precision: str) -> dict:
    """The identity of the export in ``model_dir`` run at ``precision`` (fp32|int8)."""
    if precision not in MODEL_FILES:
        raise TokfilterError(f"precision must be one of {sorted(MODEL_FILES)}, got {precision!r}")
    model_dir = Path(model_dir)
    card = load_model_card(model_dir)
    onnx, tokenizer = model_dir / MODEL_FILES[precision], model_dir / "tokenizer.json"
    for path in (onnx, tokenizer):
        if not path.is_file():
            raise TokfilterError(f"model file not found: {path} (run `tokfilter train-classifier`)")
    return {"model_name": card.name, "precision": precision, "onnx_sha256": file_sha256(onnx), "threshold": card.threshold,
            "max_length": card.max_length, "stride": card.stride, "tokenizer_sha256": file_sha256(tokenizer)}


def identity_parameters(identity: dict) -> dict[str, str]:
    """``identity`` as Triton config string parameters (``str`` of a float reads back exactly)."""
    return {key: str(identity[key]) for key in IDENTITY_FIELDS}


def identity_from_parameters(parameters: dict[str, str], where: str) -> dict | None:
    """The identity a served model publishes, or None for a config that publishes none (the native
    onnxruntime configs of the NGC container); ``where`` names the model in errors."""
    if "onnx_sha256" not in parameters:
        return None
    missing = [key for key in IDENTITY_FIELDS if key not in parameters]
    if missing:
        raise TokfilterError(f"{where} publishes an incomplete model identity: no {', '.join(missing)}")
    try:
        return {key: kind(parameters[key]) for key, kind in IDENTITY_FIELDS.items()}
    except ValueError as err:
        raise TokfilterError(f"{where} publishes an invalid model identity: {err}") from err


def identity_difference(recorded: dict, current: dict) -> str | None:
    """The first identity field whose value differs, as ``field: recorded != current``; None if equal."""
    for key in IDENTITY_FIELDS:
        if recorded.get(key) != current.get(key):
            return f"{key}: {recorded.get(key)!r} != {current.get(key)!r}"
    return None
