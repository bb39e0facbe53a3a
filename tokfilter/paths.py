"""Default locations of generated files. Everything large lives under ``artifacts/`` (git-ignored).

One rule, for a source checkout and an installed package alike: ``TOKFILTER_ARTIFACTS`` if set;
else the checkout's ``artifacts/`` when tokfilter runs from a source checkout (its
``pyproject.toml`` beside the ``tokfilter/`` package folder, as in an editable install); else
``artifacts/`` in the current directory (a non-editable install has no checkout to find).

The Triton model repository follows the same rule: a checkout's committed ``model_repo/``, else
``<artifacts>/model_repo``, which ``tokfilter model-repo`` fills from the configs shipped as package
data (``tokfilter/model_repo/`` in the installed package).
"""

from __future__ import annotations

import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
# the source checkout tokfilter runs from; None for an installed package
REPO_ROOT: Path | None = PACKAGE_DIR.parent if (PACKAGE_DIR.parent / "pyproject.toml").is_file() else None
ARTIFACTS = Path(os.environ.get("TOKFILTER_ARTIFACTS") or (REPO_ROOT or Path.cwd()) / "artifacts")

SOURCES_DIR = ARTIFACTS / "sources"
CORPUS_DIR = ARTIFACTS / "corpus"
MODELS_DIR = ARTIFACTS / "models"
TOKEN_MODEL_DIR = MODELS_DIR / "token_classifier"
DOC_MODEL_DIR = MODELS_DIR / "doc_classifier"
JOINT_MODEL_DIR = MODELS_DIR / "joint_classifier"  # one encoder, token and document heads
TARGET_TOKENIZER = ARTIFACTS / "target_tokenizer" / "tokenizer.json"
SHARDS_DIR = ARTIFACTS / "shards"
RUNS_DIR = ARTIFACTS / "runs"
# the committed model-repository configs and python-backend entry points (package data when installed)
MODEL_CONFIGS_DIR = REPO_ROOT / "model_repo" if REPO_ROOT else PACKAGE_DIR / "model_repo"
MODEL_REPO_DIR = MODEL_CONFIGS_DIR if REPO_ROOT else ARTIFACTS / "model_repo"
