"""An experiment's config: the grid (sizes, run types, thresholds) and the budgets of its runs.

Configs are JSON files; the named ones ship in ``configs/`` beside this module.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from pathlib import Path

from tokfilter.errors import TokfilterError
from tokfilter.training.pretrain.model import SIZES
from tokfilter.training.pretrain.train import RUN_TYPES

CONFIGS_DIR = Path(__file__).resolve().parent / "configs"


@dataclass
class ExperimentConfig:
    name: str
    sizes: list[str]
    run_types: list[str] = field(default_factory=lambda: list(RUN_TYPES))
    token_thresholds: list = field(default_factory=lambda: ["card"])  # floats or "card"
    token_flag_fractions: list[float] = field(default_factory=list)  # quantile thresholds
    document_thresholds: list = field(default_factory=lambda: ["card"])
    document_flag_fractions: list[float] = field(default_factory=list)  # token-weighted
    seq_len: int = 128
    batch_size: int = 16
    token_budget: int = 200_000
    lr: float = 3e-3
    seed: int = 0
    corpus_size: str = "default"
    tokenizer_vocab_size: int = 8192
    classifier_layers: int = 2
    classifier_max_steps: int = 300
    label_noise: float = 0.0
    eval_max_passages: int = 400
    eval_max_questions: int = 200
    adversarial_max_tokens: int = 100_000
    adversarial_eval_every: int = 4096
    adversarial_lr: float = 1e-3
    notes: str = ""  # why the config is sized as it is; printed at the top of the report

    @classmethod
    def load(cls, path: Path) -> "ExperimentConfig":
        try:
            raw = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise TokfilterError(f"config: cannot read {path}: {err}") from err
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise TokfilterError(f"config: unknown key(s) {', '.join(unknown)} in {path}; known: {', '.join(sorted(known))}")
        config = cls(**raw)
        config.validate()
        return config

    def validate(self) -> None:
        for size in self.sizes:
            if size not in SIZES:
                raise TokfilterError(f"config sizes: unknown size {size!r}; choose from {', '.join(SIZES)}")
        for run_type in self.run_types:
            if run_type not in RUN_TYPES:
                raise TokfilterError(f"config run_types: {run_type!r} is not one of {', '.join(RUN_TYPES)}")
        if "nomask" not in self.run_types:
            raise TokfilterError("config run_types: must include 'nomask' (the baseline every claim compares to)")
        for key in ("token_thresholds", "document_thresholds"):
            for t in getattr(self, key):
                if t != "card" and not (isinstance(t, (int, float)) and 0 <= t <= 1):
                    raise TokfilterError(f"config {key}: {t!r} must be 'card' or a number in [0, 1]")
        for key in ("token_flag_fractions", "document_flag_fractions"):
            for f in getattr(self, key):
                if not 0 < f < 1:
                    raise TokfilterError(f"config {key}: {f} must be in (0, 1)")
        if not 0 <= self.label_noise < 0.5:
            raise TokfilterError(f"config label_noise: {self.label_noise} must be in [0, 0.5)")



def config_path(name_or_path: str) -> Path:
    """A config file, or the name of one in configs/."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    named = CONFIGS_DIR / f"{name_or_path}.json"
    if named.is_file():
        return named
    known = ", ".join(sorted(p.stem for p in CONFIGS_DIR.glob("*.json")))
    raise TokfilterError(f"CONFIG: {name_or_path!r} is neither a file nor a config in {CONFIGS_DIR} ({known})")

