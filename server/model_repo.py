"""``tokfilter model-repo``: place exported models into a Triton model repository.

The committed ``model_repo/`` holds the configs and python-backend entry points (shipped as package
data, ``tokfilter/model_repo/``, in an installed package); this command links (or copies)
``model.onnx``, ``model.int8.onnx``, ``tokenizer.json`` and ``tokfilter.json`` of each exported
classifier into ``<repo>/<model>/1/``. The default repository is a checkout's ``model_repo/``, else
``<artifacts>/model_repo`` (``tokfilter.paths``); into any other folder (``--repo``) the configs are
copied first, so tests, benchmarks and installed packages never write into the shipped ones.

By default the joint model (``joint_classifier/``: one encoder, token and document heads) goes
into both window slots: ``token_classifier`` then serves both heads from one run (its config gains
the output ``doc_forget_prob``), ``doc_classifier`` its document head, so the server's set of
models, its supervision and the clients of either slot stay as they are. ``--two-models`` places
the separate pair (``token_classifier/``, ``doc_classifier/``) instead.
"""

from __future__ import annotations

import argparse
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from google.protobuf import json_format, text_format
from tritonclient.grpc import model_config_pb2

from tokfilter.engines import ENGINES, PRECISIONS
from tokfilter.errors import TokfilterError
from tokfilter.identity import identity_parameters, model_identity
from tokfilter.modelcard import JOINT_DOC_OUTPUT, load_model_card
from tokfilter.paths import MODEL_CONFIGS_DIR, MODEL_REPO_DIR, MODELS_DIR

WINDOW_MODELS = ("token_classifier", "doc_classifier")
SERVED_MODELS = WINDOW_MODELS + ("filter_text",)
MODEL_FILES = ("model.onnx", "model.int8.onnx", "tokenizer.json", "tokfilter.json")
JOINT_MODEL = "joint_classifier"
VERSION = "1"


def parse_config(path: Path) -> model_config_pb2.ModelConfig:
    """Parse a config.pbtxt against Triton's model-config schema (error names the file)."""
    try:
        return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())
    except (text_format.ParseError, OSError) as err:
        raise TokfilterError(f"invalid Triton model config {path}: {err}") from err


@dataclass(frozen=True)
class ConfigOverrides:
    """What ``tokfilter serve`` changes in the committed configs (None: the config's value):
    instances per model, engine threads, the model file's precision (fp32|int8), the engine
    (``tokfilter.engines``) and the precision it runs the fp32 file at."""

    instances: int | None = None
    ort_threads: int | None = None
    precision: str | None = None
    engine: str | None = None
    engine_precision: str | None = None

    def __post_init__(self) -> None:
        if self.instances is not None and self.instances < 1:
            raise TokfilterError(f"--instances must be >= 1, got {self.instances}")
        if self.engine is not None and self.engine not in ENGINES:
            raise TokfilterError(f"--engine must be one of {', '.join(ENGINES)}, got {self.engine!r}")
        if self.engine_precision is not None:
            known = PRECISIONS.get(self.engine or "", sorted({p for ps in PRECISIONS.values() for p in ps} - {"int8"}))
            if self.engine_precision not in known or self.engine_precision == "int8":
                raise TokfilterError(f"--engine-precision must be one of {', '.join(p for p in known if p != 'int8')} "
                                     f"for engine {self.engine or 'auto'}, got {self.engine_precision!r} (int8: --precision int8)")


def served_config(repo: Path, model: str, overrides: ConfigOverrides = ConfigOverrides()) -> str:
    """The committed config of ``model`` as the JSON Triton's load API takes, with the asked-for
    overrides, and for window models the identity of the model file served at that precision
    (``tokfilter.identity``), which clients record and check against."""
    config = parse_config(repo / model / "config.pbtxt")
    for key in ("precision", "engine", "engine_precision"):
        if getattr(overrides, key) is not None:
            config.parameters[key].string_value = getattr(overrides, key)
    if model in WINDOW_MODELS:
        served = model_identity(repo / model / VERSION, config.parameters["precision"].string_value or "fp32")
        for key, value in identity_parameters(served).items():
            config.parameters[key].string_value = value
    if model == "token_classifier" and load_model_card(repo / model / VERSION).joint:
        config.output.add(name=JOINT_DOC_OUTPUT, data_type=model_config_pb2.TYPE_FP32, dims=[1])
    if overrides.instances is not None:
        for group in config.instance_group:
            group.count = overrides.instances
    if overrides.ort_threads is not None:
        config.parameters["ort_threads"].string_value = str(overrides.ort_threads)
    return json_format.MessageToJson(config, preserving_proto_field_name=True)


def missing_model_files(repo: Path) -> list[Path]:
    return [repo / m / VERSION / f for m in WINDOW_MODELS for f in MODEL_FILES if not (repo / m / VERSION / f).is_file()]


def place_models(models_dir: Path, repo: Path = MODEL_REPO_DIR, copy: bool = False, joint: bool = False) -> list[Path]:
    """Put the exported model files into ``repo`` (links unless ``copy``); returns the placed paths.
    ``joint``: ``models_dir/joint_classifier`` fills both window slots."""
    models_dir, repo = Path(models_dir).resolve(), Path(repo).resolve()
    if repo != MODEL_CONFIGS_DIR.resolve():
        for model in SERVED_MODELS:
            shutil.copytree(MODEL_CONFIGS_DIR / model, repo / model, dirs_exist_ok=True, ignore=shutil.ignore_patterns(*MODEL_FILES, "__pycache__"))
    placed = []
    for model in WINDOW_MODELS:
        for name in MODEL_FILES:
            src = models_dir / (JOINT_MODEL if joint else model) / name
            if not src.is_file():
                task = "--task joint" if joint else f"--task {model.removesuffix('_classifier').replace('doc', 'document')}"
                other = "--two-models places the separate pair" if joint else "without --two-models the joint model is placed"
                raise TokfilterError(f"model file not found: {src} (run `tokfilter train-classifier {task}` first, or pass "
                                     f"--models-dir; {other})")
            dst = repo / model / VERSION / name
            dst.parent.mkdir(parents=True, exist_ok=True)
            if dst.is_symlink() or dst.exists():
                dst.unlink()
            shutil.copy2(src, dst) if copy else os.symlink(src, dst)
            placed.append(dst)
    return placed


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--models-dir", type=Path, default=MODELS_DIR, help="exported classifiers (default: %(default)s)")
    parser.add_argument("--repo", type=Path, default=MODEL_REPO_DIR, help="model repository to fill (default: %(default)s)")
    parser.add_argument("--copy", action="store_true", help="copy the files instead of linking them")
    parser.add_argument("--two-models", action="store_true",
                        help="place the separate token and document models (models-dir/token_classifier, doc_classifier) "
                             "instead of the joint model (models-dir/joint_classifier: both heads, one pass) in both slots")


def main(args: argparse.Namespace) -> int:
    placed = place_models(args.models_dir, args.repo, args.copy, joint=not args.two_models)
    print(f"placed {len(placed)} files from {args.models_dir} into {args.repo}")
    return 0
