"""README "Masks in your trainer": every sh and python block runs as written, in order, in a directory
laid out as the README's earlier steps leave it (artifacts/ with corpus, models, target tokenizer and
shards, here from the tiny fixtures). `text` blocks are the ones the README says are not run here."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tokfilter.clients.engines.local import FilterSettings, run_local

README = Path(__file__).resolve().parent.parent / "README.md"


def section_blocks(title: str) -> list[tuple[str, str]]:
    text = README.read_text()
    start = text.index(f"## {title}\n")
    end = text.find("\n## ", start + 1)
    return re.findall(r"```(\w+)\n(.*?)```", text[start:end], flags=re.S)


@pytest.mark.slow
def test_masks_in_your_trainer_examples_run_as_written(tiny_corpus_dir, tiny_joint_model_dir, tiny_target_tokenizer, tmp_path):
    artifacts = tmp_path / "artifacts"
    (artifacts / "corpus").mkdir(parents=True)
    (artifacts / "corpus" / "test.jsonl").write_text((tiny_corpus_dir / "test.jsonl").read_text())
    (artifacts / "models").mkdir()
    (artifacts / "models" / "joint_classifier").symlink_to(tiny_joint_model_dir)  # the default model, alone
    (artifacts / "target_tokenizer").mkdir()
    tokenizer = artifacts / "target_tokenizer" / "tokenizer.json"
    shutil.copy(tiny_target_tokenizer, tokenizer)
    settings = FilterSettings(token_model=str(artifacts / "models" / "joint_classifier"), target_tokenizer=str(tokenizer), threads=1)
    run_local([str(artifacts / "corpus" / "test.jsonl")], artifacts / "shards" / "train", settings, show_progress=False)
    (tmp_path / ".venv").symlink_to(Path(sys.prefix))
    env = {**os.environ, "TOKFILTER_ARTIFACTS": str(artifacts)}

    blocks = section_blocks("Masks in your trainer")
    assert [lang for lang, _ in blocks].count("python") >= 4 and any(lang == "sh" for lang, _ in blocks)
    for lang, code in blocks:
        if lang == "text":
            continue
        command = ["bash", "-euo", "pipefail", "-c", code] if lang == "sh" else [sys.executable, "-c", code]
        done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, f"{lang} block failed:\n{code}\n{done.stderr[-3000:]}"

    for fmt in ("olmo-core", "megatron", "hf", "mds"):
        assert (artifacts / "export" / fmt / "export.json").is_file()
    assert list((artifacts / "scored").glob("*.jsonl.gz"))
    assert (artifacts / "dolma" / "attributes" / "tokfilter" / "test.jsonl.gz").is_file()
