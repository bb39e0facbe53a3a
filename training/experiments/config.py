"""An experiment's config: the grid (sizes, run types, thresholds), the baseline runs of the compute
law, the token-classifier variants of an ablation, and the budgets of its runs.

Configs are JSON files; the named ones ship in ``configs/`` beside this module.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from pathlib import Path

from tokfilter.errors import TokfilterError
from tokfilter.training.pretrain.model import SIZES
from tokfilter.training.precision import PRECISIONS
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
    # Unfiltered runs of the compute law: every size x budget here, besides sizes x token_budget.
    baseline_sizes: list[str] = field(default_factory=list)
    baseline_token_budgets: list[int] = field(default_factory=list)
    bootstrap_replicates: int = 1000  # resamplings of the evaluation passages for ratio intervals
    # Token classifiers of an ablation, each filtering its own shards for a mask run per size:
    # {"name", "label_noise" (0), "layers", "max_steps" (the classifier_* values), "labels_from"
    # (a variant listed before it whose predictions become the training labels; none: the corpus's)}.
    classifier_variants: list[dict] = field(default_factory=list)
    # Variants filter at their card threshold, or at the quantile flagging this share of training tokens.
    variant_flag_fraction: float | None = None
    device: str = "cpu"
    precision: str = "auto"  # auto | fp32 | bf16 (pretraining and evaluation)
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
        if not 0 <= self.label_noise <= 0.5:
            raise TokfilterError(f"config label_noise: {self.label_noise} must be in [0, 0.5]")
        for size in self.baseline_sizes:
            if size not in SIZES:
                raise TokfilterError(f"config baseline_sizes: unknown size {size!r}; choose from {', '.join(SIZES)}")
        for budget in self.baseline_token_budgets:
            if not (isinstance(budget, int) and budget >= 1):
                raise TokfilterError(f"config baseline_token_budgets: {budget!r} must be an integer >= 1")
        if self.bootstrap_replicates < 10:
            raise TokfilterError(f"config bootstrap_replicates: {self.bootstrap_replicates} must be >= 10")
        if self.precision not in PRECISIONS:
            raise TokfilterError(f"config precision: {self.precision!r} is not one of {', '.join(PRECISIONS)}")
        if self.device not in ("cpu", "cuda"):
            raise TokfilterError(f"config device: {self.device!r} must be 'cpu' or 'cuda'")
        if self.variant_flag_fraction is not None and not 0 < self.variant_flag_fraction < 1:
            raise TokfilterError(f"config variant_flag_fraction: {self.variant_flag_fraction} must be in (0, 1)")
        self.classifier_variants = [self.variant(spec, i) for i, spec in enumerate(self.classifier_variants)]

    def variant(self, spec: dict, index: int) -> dict:
        """A classifier variant with its defaults filled in, checked against the variants before it."""
        where = f"config classifier_variants[{index}]"
        known = {"name", "label_noise", "layers", "max_steps", "labels_from"}
        if not isinstance(spec, dict) or not isinstance(spec.get("name"), str) or not spec["name"].isidentifier():
            raise TokfilterError(f"{where}: needs a 'name' made of letters, digits and underscores")
        if set(spec) - known:
            raise TokfilterError(f"{where}: unknown key(s) {', '.join(sorted(set(spec) - known))}; known: {', '.join(sorted(known))}")
        earlier = [v["name"] for v in self.classifier_variants[:index]]
        if spec["name"] in earlier:
            raise TokfilterError(f"{where}: name {spec['name']!r} is used twice")
        full = {"label_noise": 0.0, "layers": self.classifier_layers, "max_steps": self.classifier_max_steps,
                "labels_from": None, **spec}
        if not 0 <= full["label_noise"] <= 0.5:
            raise TokfilterError(f"{where}: label_noise {full['label_noise']} must be in [0, 0.5]")
        if full["labels_from"] is not None and full["labels_from"] not in earlier:
            raise TokfilterError(f"{where}: labels_from {full['labels_from']!r} must name a variant listed before it")
        return full



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

