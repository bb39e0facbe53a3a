"""Evaluation of pretrained runs (``tokfilter evaluate``) on held-out test-split text.

Three measurements, as defined in the paper notes:
- held-out loss per domain: mean nats per token on pure-domain passages (``meta.passages``) of the
  test split: forget (medicine), retain (biology) and general text;
- definition-matching multiple choice: "term:" followed by four candidate definitions from the same
  source and domain, scored by the summed log-probability of each definition (cloze); chance is 25%;
- adversarial fine-tuning: train on medical training-split passages and count the tokens needed
  until the forget loss falls to the unfiltered model's.
"""

from __future__ import annotations

import argparse
import copy
import json
import random
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from tokfilter import paths
from tokfilter.errors import TokfilterError
from tokfilter.training.corpus.build import read_corpus
from tokfilter.training.corpus.domains import FORGET, PASSAGE_DOMAINS, RETAIN  # noqa: F401 (RETAIN re-exported to the experiments)
from tokfilter.training.pretrain.model import GPT, IGNORE_INDEX, load_model
from tokfilter.windows import load_tokenizer

DOMAINS = PASSAGE_DOMAINS  # evaluated on pure passages of each: forget, retain, general
EOT = "<|endoftext|>"


@dataclass(frozen=True)
class EvalConfig:
    max_passages: int = 400  # per domain, first ones by document order (deterministic)
    max_questions: int = 200  # per domain
    batch_size: int = 32
    seed: int = 0


@dataclass(frozen=True)
class Question:
    domain: str
    term: str
    options: tuple[str, ...]
    answer: int


def domain_passages(docs: list[dict], domains: tuple[str, ...] = DOMAINS) -> dict[str, list[str]]:
    """Pure-domain passage texts by domain, in document order."""
    out: dict[str, list[str]] = {d: [] for d in domains}
    for doc in docs:
        for p in doc["meta"]["passages"]:
            if p["domain"] in out:
                text = doc["text"][p["start"] : p["end"]].strip()
                if text:
                    out[p["domain"]].append(text)
    return out


def build_questions(items: list[dict], split: str, seed: int, n_options: int = 4) -> list[Question]:
    """Multiple-choice questions from ``split`` items only: each item's definition against
    ``n_options - 1`` distinct distractor definitions from items of the same source and domain."""
    groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for item in items:
        if item["split"] == split:
            groups[(item["source"], item["domain"])].append(item)
    rng = random.Random(seed)
    questions = []
    for (_, domain), group in sorted(groups.items()):
        for item in group:
            pool = sorted({o["definition"] for o in group if o["definition"] != item["definition"]})
            if len(pool) < n_options - 1:
                continue
            options = rng.sample(pool, n_options - 1)
            answer = rng.randrange(n_options)
            options.insert(answer, item["definition"])
            questions.append(Question(domain, item["term"], tuple(options), answer))
    return questions


def chunk_sequence(ids: list[int], seq_len: int) -> list[list[int]]:
    """Split a token sequence into pieces of at most seq_len + 1 tokens that overlap by one, so
    every token after the first is a target exactly once."""
    if len(ids) <= seq_len + 1:
        return [ids]
    return [ids[i : i + seq_len + 1] for i in range(0, len(ids) - 1, seq_len)]


@torch.no_grad()
def score_sequences(model: GPT, sequences: list[list[int]], first_target: list[int], batch_size: int) -> np.ndarray:
    """Summed log-prob (negative, nats) and target count per sequence, over target positions
    >= first_target[i] (position j predicts token j). Returns [n, 2]: (sum of losses, n targets)."""
    device = next(model.parameters()).device
    out = np.zeros((len(sequences), 2))
    order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]))  # length bucketing
    for b in range(0, len(order), batch_size):
        idx = order[b : b + batch_size]
        width = max(len(sequences[i]) for i in idx) - 1
        inputs = torch.zeros((len(idx), width), dtype=torch.long)
        targets = torch.full((len(idx), width), IGNORE_INDEX, dtype=torch.long)
        for row, i in enumerate(idx):
            seq = torch.tensor(sequences[i], dtype=torch.long)
            n = len(seq) - 1
            inputs[row, :n] = seq[:-1]
            targets[row, :n] = seq[1:]
            targets[row, : max(first_target[i], 1) - 1] = IGNORE_INDEX
        losses = model.token_losses(inputs.to(device), targets.to(device)).float().cpu()
        valid = targets != IGNORE_INDEX
        for row, i in enumerate(idx):
            out[i] = (float(losses[row][valid[row]].sum()), int(valid[row].sum()))
    return out


class Evaluator:
    """Holds the tokenized held-out sets so several models are scored on identical data."""

    def __init__(self, corpus_dir: Path, tokenizer_path: Path, seq_len: int, config: EvalConfig = EvalConfig()):
        self.config = config
        self.seq_len = seq_len
        tokenizer = load_tokenizer(tokenizer_path)
        self.eot = tokenizer.token_to_id(EOT)
        if self.eot is None:
            raise TokfilterError(f"tokenizer: {tokenizer_path} has no {EOT} token")
        encode = lambda texts: [e.ids for e in tokenizer.encode_batch(texts, add_special_tokens=False)]  # noqa: E731
        corpus_dir = Path(corpus_dir)
        test_passages = domain_passages(read_corpus(corpus_dir / "test.jsonl"))
        self.loss_sets: dict[str, list[list[int]]] = {}
        for domain, texts in test_passages.items():
            chunks = []
            for ids in encode(texts[: config.max_passages]):
                chunks.extend(chunk_sequence([self.eot] + ids, seq_len))
            self.loss_sets[domain] = chunks
        self.questions = self._questions(list(read_corpus(corpus_dir / "items.jsonl")), encode)
        self.forget_train = self._packed_stream(encode(domain_passages(read_corpus(corpus_dir / "train.jsonl"), (FORGET,))[FORGET]))

    def _questions(self, items: list[dict], encode) -> dict[str, list[tuple[Question, list[list[int]], int]]]:
        by_domain: dict[str, list] = defaultdict(list)
        for q in build_questions(items, "test", self.config.seed):
            if len(by_domain[q.domain]) >= self.config.max_questions:
                continue
            prompt = [self.eot] + encode([f"{q.term}:"])[0]
            answers = encode([f" {o}" for o in q.options])
            seqs = [(prompt + a)[: self.seq_len + 1] for a in answers]
            by_domain[q.domain].append((q, seqs, len(prompt)))
        return dict(by_domain)

    def _packed_stream(self, docs: list[list[int]]) -> torch.Tensor:
        """Forget-domain training text as one token stream with end-of-text separators."""
        stream = [t for ids in docs for t in [self.eot] + ids]
        n = (len(stream) - 1) // self.seq_len
        if n < 1:
            raise TokfilterError("corpus: too little medical training text for adversarial fine-tuning")
        return torch.tensor(stream[: n * self.seq_len + 1], dtype=torch.long)

    def domain_losses(self, model: GPT) -> dict[str, dict]:
        result = {}
        for domain, seqs in self.loss_sets.items():
            scores = score_sequences(model, seqs, [1] * len(seqs), self.config.batch_size)
            total, n = scores.sum(axis=0)
            result[domain] = {"loss": float(total / n) if n else float("nan"), "tokens": int(n)}
        return result

    def multiple_choice(self, model: GPT) -> dict[str, dict]:
        result = {}
        for domain, entries in sorted(self.questions.items()):
            seqs = [s for _, options, _ in entries for s in options]
            firsts = [p for _, options, p in entries for _ in options]
            scores = score_sequences(model, seqs, firsts, self.config.batch_size)[:, 0]
            n_opt = len(entries[0][0].options)
            picks = scores.reshape(len(entries), n_opt).argmin(axis=1)  # lowest loss = highest log-prob
            correct = sum(int(p == q.answer) for p, (q, _, _) in zip(picks, entries))
            result[domain] = {"accuracy": correct / len(entries), "questions": len(entries), "chance": 1.0 / n_opt}
        return result

    def adversarial_finetune(self, model: GPT, target_loss: float, max_tokens: int, eval_every: int,
                             lr: float = 1e-3, batch_size: int = 8) -> dict:
        """Fine-tune a copy on medical training text; forget loss every ``eval_every`` tokens until it
        reaches ``target_loss`` or ``max_tokens`` are used. ``tokens_to_recover`` is None if never."""
        model = copy.deepcopy(model).train()
        torch.manual_seed(self.config.seed)
        optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
        device = next(model.parameters()).device
        windows = self.forget_train[:-1].view(-1, self.seq_len)
        next_tokens = self.forget_train[1:].view(-1, self.seq_len)
        forget = self.loss_sets[FORGET]
        evaluate = lambda: float(np.divide(*score_sequences(model.eval(), forget, [1] * len(forget), self.config.batch_size).sum(axis=0)))  # noqa: E731
        curve = [(0, evaluate())]
        tokens, recovered, batch_index = 0, None, 0
        if curve[0][1] <= target_loss:
            recovered = 0
        while recovered is None and tokens < max_tokens:
            rows = torch.arange(batch_index * batch_size, (batch_index + 1) * batch_size) % len(windows)
            batch_index += 1
            model.train()
            loss = model.loss(windows[rows].to(device), next_tokens[rows].to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            tokens += rows.numel() * self.seq_len
            if tokens // eval_every != (tokens - rows.numel() * self.seq_len) // eval_every or tokens >= max_tokens:
                curve.append((tokens, evaluate()))
                if curve[-1][1] <= target_loss:
                    recovered = tokens
        return {"target_loss": target_loss, "tokens_to_recover": recovered, "max_tokens": max_tokens,
                "curve": [[t, l] for t, l in curve]}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("runs", nargs="+", type=Path, help="run directories written by `tokfilter pretrain`")
    parser.add_argument("--corpus", type=Path, default=paths.CORPUS_DIR)
    parser.add_argument("--tokenizer", type=Path, default=paths.TARGET_TOKENIZER)
    parser.add_argument("--reference", type=Path, help="unfiltered (nomask) run whose forget loss the adversarial fine-tuning must reach")
    parser.add_argument("--adversarial-tokens", type=int, default=0, help="fine-tuning budget in tokens (0: skip)")
    parser.add_argument("--adversarial-eval-every", type=int, default=2048, help="tokens between forget-loss evaluations")
    parser.add_argument("--max-passages", type=int, default=EvalConfig.max_passages)
    parser.add_argument("--max-questions", type=int, default=EvalConfig.max_questions)


def main(args: argparse.Namespace) -> int:
    if args.adversarial_tokens and args.reference is None:
        raise TokfilterError("--reference: needed with --adversarial-tokens (the nomask run to recover to)")
    if args.adversarial_tokens < 0:
        raise TokfilterError(f"--adversarial-tokens: {args.adversarial_tokens} must be >= 0")
    models = {run: load_model(Path(run) / "model.pt")[0] for run in args.runs}
    seq_len = min(m.config.max_seq_len for m in models.values())
    evaluator = Evaluator(args.corpus, args.tokenizer, seq_len, EvalConfig(args.max_passages, args.max_questions))
    target = None
    if args.adversarial_tokens:
        target = evaluator.domain_losses(load_model(Path(args.reference) / "model.pt")[0])[FORGET]["loss"]
    for run, model in models.items():
        result = {"losses": evaluator.domain_losses(model), "multiple_choice": evaluator.multiple_choice(model)}
        if target is not None:
            result["adversarial"] = evaluator.adversarial_finetune(model, target, args.adversarial_tokens, args.adversarial_eval_every)
        (Path(run) / "eval.json").write_text(json.dumps(result, indent=2))
        print(json.dumps({"run": str(run), **result}), file=sys.stdout)
    return 0
