"""Evaluation of pretrained runs (``tokfilter evaluate``) on held-out test-split text.

Measurements, as defined in the paper notes:
- held-out loss per domain: mean nats per token on pure-domain passages (``meta.passages``) of the
  test split: forget (medicine), retain (biology) and general text; the per-passage sums are kept
  so that intervals can resample passages;
- multiple choice by cloze log-probability (``mcq``): definitions of held-out items
  (generalisation), definitions of training items the run trained on (absorbed knowledge) and,
  given their folder, real benchmark sets; chance is 25%;
- adversarial fine-tuning: train on medical training-split passages and count the tokens needed
  until the forget loss falls to the unfiltered model's.
"""

from __future__ import annotations

import argparse
import copy
import json
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
from tokfilter.training.pretrain.mcq import ClozeItem, build_questions, fit_cloze, load_real_sets
from tokfilter.training.pretrain.model import GPT, IGNORE_INDEX, load_model
from tokfilter.training.precision import PRECISIONS, autocast, resolve_precision
from tokfilter.windows import load_tokenizer

DOMAINS = PASSAGE_DOMAINS  # evaluated on pure passages of each: forget, retain, general
EOT = "<|endoftext|>"
# Kinds of multiple choice: definitions of test-split items, of training items the run read, real sets.
MC_KINDS = ("held_out", "absorbed", "real")


@dataclass(frozen=True)
class EvalConfig:
    max_passages: int = 400  # per domain, first ones by document order (deterministic)
    max_questions: int = 200  # per domain, and per real set
    batch_size: int = 32
    seed: int = 0
    precision: str = "fp32"  # a resolved precision: fp32 or bf16


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


def chunk_sequence(ids: list[int], seq_len: int) -> list[list[int]]:
    """Split a token sequence into pieces of at most seq_len + 1 tokens that overlap by one, so
    every token after the first is a target exactly once."""
    if len(ids) <= seq_len + 1:
        return [ids]
    return [ids[i : i + seq_len + 1] for i in range(0, len(ids) - 1, seq_len)]


@torch.no_grad()
def score_sequences(model: GPT, sequences: list[list[int]], first_target: list[int], batch_size: int,
                    precision: str = "fp32") -> np.ndarray:
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
        with autocast(precision, device.type):
            losses = model.token_losses(inputs.to(device), targets.to(device)).float().cpu()
        valid = targets != IGNORE_INDEX
        for row, i in enumerate(idx):
            out[i] = (float(losses[row][valid[row]].sum()), int(valid[row].sum()))
    return out


class Evaluator:
    """Holds the tokenized held-out sets so several models are scored on identical data.

    ``absorbed_items``: ids of the training items the runs trained on (``seen.seen_item_ids``);
    None skips the absorbed-knowledge questions. ``mcq_data``: the folder of the real sets; None
    skips them."""

    def __init__(self, corpus_dir: Path, tokenizer_path: Path, seq_len: int, config: EvalConfig = EvalConfig(),
                 absorbed_items: set[str] | None = None, mcq_data: Path | None = None):
        self.config = config
        self.seq_len = seq_len
        tokenizer = load_tokenizer(tokenizer_path)
        self.eot = tokenizer.token_to_id(EOT)
        if self.eot is None:
            raise TokfilterError(f"tokenizer: {tokenizer_path} has no {EOT} token")
        self.encode = lambda texts: [e.ids for e in tokenizer.encode_batch(texts, add_special_tokens=False)]  # noqa: E731
        corpus_dir = Path(corpus_dir)
        test_passages = domain_passages(read_corpus(corpus_dir / "test.jsonl"))
        self.loss_sets: dict[str, list[list[int]]] = {}
        self.chunk_passage: dict[str, np.ndarray] = {}  # passage index of each chunk
        for domain, texts in test_passages.items():
            chunks, owners = [], []
            for index, ids in enumerate(self.encode(texts[: config.max_passages])):
                pieces = chunk_sequence([self.eot] + ids, seq_len)
                chunks.extend(pieces)
                owners.extend([index] * len(pieces))
            self.loss_sets[domain] = chunks
            self.chunk_passage[domain] = np.asarray(owners, dtype=np.int64)
        items = list(read_corpus(corpus_dir / "items.jsonl"))
        cap, seed = config.max_questions, config.seed
        self.questions: dict[str, dict[str, list]] = {"held_out": self._encode_items(build_questions(items, "test", seed, cap))}
        if absorbed_items is not None:
            seen = [i for i in items if i["item_id"] in absorbed_items]
            self.questions["absorbed"] = self._encode_items(build_questions(seen, "train", seed, cap))
        if mcq_data is not None:
            self.questions["real"] = self._encode_items(load_real_sets(mcq_data, cap, seed))
        self.forget_train = self._packed_stream(self.encode(domain_passages(read_corpus(corpus_dir / "train.jsonl"), (FORGET,))[FORGET]))

    def _encode_items(self, items: list[ClozeItem]) -> dict[str, list[tuple[ClozeItem, list[list[int]], list[int]]]]:
        """Per set: each item with its option sequences and the index of each option's first token."""
        by_set: dict[str, list] = defaultdict(list)
        prompts = self.encode([i.prompt for i in items])
        options = iter(self.encode([f" {o}" for i in items for o in i.options]))
        for item, prompt in zip(items, prompts):
            fitted = [fit_cloze([self.eot] + prompt, next(options), self.seq_len) for _ in item.options]
            by_set[item.set_name].append((item, [seq for seq, _ in fitted], [first for _, first in fitted]))
        return dict(by_set)

    def _packed_stream(self, docs: list[list[int]]) -> torch.Tensor:
        """Forget-domain training text as one token stream with end-of-text separators."""
        stream = [t for ids in docs for t in [self.eot] + ids]
        n = (len(stream) - 1) // self.seq_len
        if n < 1:
            raise TokfilterError("corpus: too little medical training text for adversarial fine-tuning")
        return torch.tensor(stream[: n * self.seq_len + 1], dtype=torch.long)

    def domain_losses(self, model: GPT) -> dict[str, dict]:
        """Mean loss per domain, and (sum of nats, tokens) per passage for resampling."""
        result = {}
        for domain, seqs in self.loss_sets.items():
            scores = score_sequences(model, seqs, [1] * len(seqs), self.config.batch_size, self.config.precision)
            per_passage = np.zeros((int(self.chunk_passage[domain].max(initial=-1)) + 1, 2))
            np.add.at(per_passage, self.chunk_passage[domain], scores)
            total, n = scores.sum(axis=0)
            result[domain] = {"loss": float(total / n) if n else float("nan"), "tokens": int(n),
                              "passages": per_passage.tolist()}
        return result

    def multiple_choice(self, model: GPT) -> dict[str, dict[str, dict]]:
        """Accuracy per kind (held_out, absorbed, real: those built) and set."""
        result: dict[str, dict[str, dict]] = {}
        for kind, sets in self.questions.items():
            result[kind] = {}
            for set_name, entries in sorted(sets.items()):
                seqs = [s for _, options, _ in entries for s in options]
                firsts = [f for _, _, fs in entries for f in fs]
                scores = score_sequences(model, seqs, firsts, self.config.batch_size, self.config.precision)[:, 0]
                n_opt = len(entries[0][0].options)
                picks = scores.reshape(len(entries), n_opt).argmin(axis=1)  # lowest loss = highest log-prob
                correct = sum(int(p == item.answer) for p, (item, _, _) in zip(picks, entries))
                result[kind][set_name] = {"accuracy": correct / len(entries), "questions": len(entries), "chance": 1.0 / n_opt}
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
        precision = self.config.precision
        evaluate = lambda: float(np.divide(*score_sequences(model.eval(), forget, [1] * len(forget), self.config.batch_size,  # noqa: E731
                                                            precision).sum(axis=0)))
        curve = [(0, evaluate())]
        tokens, recovered, batch_index = 0, None, 0
        if curve[0][1] <= target_loss:
            recovered = 0
        while recovered is None and tokens < max_tokens:
            rows = torch.arange(batch_index * batch_size, (batch_index + 1) * batch_size) % len(windows)
            batch_index += 1
            model.train()
            with autocast(precision, device.type):
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
    parser.add_argument("--shards", type=Path, default=None,
                        help="the shards the runs trained on: asks absorbed-knowledge questions of the training items "
                             "the --reference run (else the first run) read; without it they are skipped")
    parser.add_argument("--mcq-data", type=Path, default=None,
                        help="folder with mmlu.jsonl, medmcqa.jsonl, medqa.jsonl: also score the real sets (skipped without it)")
    parser.add_argument("--precision", choices=PRECISIONS, default="auto",
                        help="auto: bf16 autocast on AMX CPUs and bf16 GPUs, else fp32")


def main(args: argparse.Namespace) -> int:
    from tokfilter.training.pretrain.seen import seen_items_of_run

    if args.adversarial_tokens and args.reference is None:
        raise TokfilterError("--reference: needed with --adversarial-tokens (the nomask run to recover to)")
    if args.adversarial_tokens < 0:
        raise TokfilterError(f"--adversarial-tokens: {args.adversarial_tokens} must be >= 0")
    models = {run: load_model(Path(run) / "model.pt")[0] for run in args.runs}
    seq_len = min(m.config.max_seq_len for m in models.values())
    absorbed = None
    if args.shards is None:
        print("absorbed-knowledge questions skipped: no --shards", file=sys.stderr)
    else:
        absorbed = seen_items_of_run(args.reference or args.runs[0], args.shards, args.corpus, args.tokenizer)
    if args.mcq_data is None:
        print("real multiple-choice sets skipped: no --mcq-data", file=sys.stderr)
    precision = resolve_precision(args.precision, "cpu")
    evaluator = Evaluator(args.corpus, args.tokenizer, seq_len,
                          EvalConfig(args.max_passages, args.max_questions, precision=precision), absorbed, args.mcq_data)
    target = None
    if args.adversarial_tokens:
        target = evaluator.domain_losses(load_model(Path(args.reference) / "model.pt")[0])[FORGET]["loss"]
    for run, model in models.items():
        result = {"precision": precision, "losses": evaluator.domain_losses(model), "multiple_choice": evaluator.multiple_choice(model)}
        if target is not None:
            result["adversarial"] = evaluator.adversarial_finetune(model, target, args.adversarial_tokens, args.adversarial_eval_every)
        (Path(run) / "eval.json").write_text(json.dumps(result, indent=2))
        print(json.dumps({"run": str(run), **result}), file=sys.stdout)
    return 0
