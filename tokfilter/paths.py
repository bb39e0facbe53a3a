"""Default locations of generated files. Everything large lives under ``artifacts/`` (git-ignored)."""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = Path(os.environ.get("TOKFILTER_ARTIFACTS", REPO_ROOT / "artifacts"))

SOURCES_DIR = ARTIFACTS / "sources"
CORPUS_DIR = ARTIFACTS / "corpus"
MODELS_DIR = ARTIFACTS / "models"
TOKEN_MODEL_DIR = MODELS_DIR / "token_classifier"
DOC_MODEL_DIR = MODELS_DIR / "doc_classifier"
TARGET_TOKENIZER = ARTIFACTS / "target_tokenizer" / "tokenizer.json"
SHARDS_DIR = ARTIFACTS / "shards"
RUNS_DIR = ARTIFACTS / "runs"
MODEL_REPO_DIR = REPO_ROOT / "model_repo"
