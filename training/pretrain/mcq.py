"""Multiple-choice items scored by cloze log-probability (the paper's rule for base models: the
option whose tokens get the highest summed log-probability after the prompt is the answer).

Three kinds of item, one format:
- definitions of the corpus's held-out (test-split) items: can a model generalise to terms it
  never read? ("term:" followed by four definitions of the same source and domain);
- definitions of training-split items the model trained on: did it absorb what it read? This is
  what filtering should remove for medicine and keep for biology;
- real benchmark questions (MMLU by domain group, MedMCQA, MedQA) from a folder given by path,
  "Question: ...\\nAnswer:" followed by each choice. Far beyond a model of a few million
  parameters; the same code scores a larger run.
"""

from __future__ import annotations

import json
import random
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from tokfilter.errors import TokfilterError

# Real sets: name -> (file, domain group or None, the corpus domain it stands for).
REAL_SETS: dict[str, tuple[str, str | None, str]] = {
    "mmlu_med": ("mmlu.jsonl", "med", "medicine"),
    "medmcqa": ("medmcqa.jsonl", None, "medicine"),
    "medqa": ("medqa.jsonl", None, "medicine"),
    "mmlu_bio": ("mmlu.jsonl", "bio", "biology"),
    "mmlu_other_science": ("mmlu.jsonl", "other_science", "general"),
    "mmlu_general": ("mmlu.jsonl", "general", "general"),
}
N_OPTIONS = 4


@dataclass(frozen=True)
class ClozeItem:
    set_name: str  # a corpus domain for definition items, a REAL_SETS name for benchmark items
    prompt: str
    options: tuple[str, ...]  # each scored as " " + option after the prompt
    answer: int


def build_questions(items: list[dict], split: str, seed: int, max_per_domain: int | None = None) -> list[ClozeItem]:
    """Definition items of ``split``: each item's definition against ``N_OPTIONS - 1`` distinct
    distractor definitions from items of the same split, source and domain. Items are taken in a
    seeded order, at most ``max_per_domain`` per domain."""
    groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for item in items:
        if item["split"] == split:
            groups[(item["source"], item["domain"])].append(item)
    rng = random.Random(seed)
    pools = {key: sorted({o["definition"] for o in group}) for key, group in groups.items()}
    candidates = [(key, item) for key, group in sorted(groups.items()) for item in group if len(pools[key]) >= N_OPTIONS]
    rng.shuffle(candidates)
    taken: dict[str, int] = defaultdict(int)
    questions = []
    for (source, domain), item in candidates:
        if max_per_domain is not None and taken[domain] >= max_per_domain:
            continue
        pool = pools[(source, domain)]
        options = [d for d in (pool[i] for i in rng.sample(range(len(pool)), N_OPTIONS)) if d != item["definition"]]
        options = options[: N_OPTIONS - 1]
        answer = rng.randrange(N_OPTIONS)
        options.insert(answer, item["definition"])
        questions.append(ClozeItem(domain, f"{item['term']}:", tuple(options), answer))
        taken[domain] += 1
    return questions


def fit_cloze(prompt: list[int], option: list[int], seq_len: int) -> tuple[list[int], int]:
    """One scored sequence of at most ``seq_len + 1`` tokens and the index of its first option
    token: the option is kept whole (cut to ``seq_len`` tokens if longer) and the prompt loses
    tokens from its start, keeping at least one."""
    option = option[:seq_len]
    kept = prompt[-(seq_len + 1 - len(option)):] if prompt else []
    return kept + option, len(kept)


def read_rows(path: Path) -> list[dict]:
    if not path.is_file():
        raise TokfilterError(f"--mcq-data: {path} not found (expected mmlu.jsonl, medmcqa.jsonl, medqa.jsonl)")
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def load_real_sets(mcq_dir: Path, max_per_set: int, seed: int) -> list[ClozeItem]:
    """Up to ``max_per_set`` items of each real set (a seeded sample): MMLU test rows by domain
    group, MedMCQA without the items that need an image, MedQA; a question repeated across MMLU
    subjects counts once."""
    mcq_dir = Path(mcq_dir)
    if not mcq_dir.is_dir():
        raise TokfilterError(f"--mcq-data: {mcq_dir} is not a directory")
    files = {name: read_rows(mcq_dir / name) for name in {f for f, _, _ in REAL_SETS.values()}}
    out = []
    for set_name, (file_name, group, _) in REAL_SETS.items():
        rows, seen = [], set()
        for row in files[file_name]:
            if group is not None and (row.get("domain_group") != group or row.get("split") != "test"):
                continue
            if row.get("in_medagents_test_good") is False or len(row["choices"]) != N_OPTIONS:
                continue
            key = (row["question"], tuple(row["choices"]))
            if key not in seen:
                seen.add(key)
                rows.append(row)
        for row in random.Random(f"{seed}:{set_name}").sample(rows, min(max_per_set, len(rows))):
            out.append(ClozeItem(set_name, f"Question: {row['question']}\nAnswer:", tuple(row["choices"]), int(row["answer"])))
    return out
