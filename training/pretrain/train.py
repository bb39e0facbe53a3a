"""Masked pretraining of the small GPT on filtered shards (``tokfilter pretrain``).

The token budget counts *unmasked* target tokens, the paper's rule: a filtered run sees more raw
tokens than an unfiltered one until it has learned from as many targets. Both counts are logged.
The learning-rate schedule (linear warmup, cosine decay) runs on that same unmasked-token progress,
so it is defined before we know how many steps the budget will take. A filter that masks nearly
every target could never reach the budget, so a run also stops after ``max_seen_factor`` times the
budget in seen tokens and records that it did not reach it (``budget_reached``).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from tokfilter import paths
from tokfilter.clients.shards.masked import MODES as RUN_TYPES  # a run type is the MaskedShards mode it trains with
from tokfilter.errors import TokfilterError
from tokfilter.training.pretrain.model import GPT, config_for_size, save_model, SIZES
from tokfilter.training.precision import PRECISIONS, autocast, resolve_precision

Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


@dataclass
class PretrainConfig:
    out_dir: Path
    size: str = "1m"
    run_type: str = "nomask"
    threshold: float = 0.5
    seq_len: int = 128
    batch_size: int = 16
    token_budget: int = 1_000_000  # unmasked target tokens
    max_seen_factor: float = 5.0  # stop after this many times the budget in seen tokens (masking > 80% saturates)
    lr: float = 3e-3
    min_lr_ratio: float = 0.1
    warmup_fraction: float = 0.05
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    seed: int = 0
    checkpoint_every: int = 500  # steps
    log_every: int = 20  # steps
    device: str = "cpu"
    precision: str = "auto"  # auto | fp32 | bf16 (autocast; see precision.py)
    resume: bool = False  # continue from out_dir/checkpoint.pt if there is one

    def validate(self) -> None:
        if self.run_type not in RUN_TYPES:
            raise TokfilterError(f"run_type: {self.run_type!r} is not one of {', '.join(RUN_TYPES)}")
        if self.size not in SIZES:
            raise TokfilterError(f"size: unknown preset {self.size!r}; choose one of {', '.join(SIZES)}")
        if not 0.0 <= self.threshold <= 1.0:
            raise TokfilterError(f"threshold: {self.threshold} must be in [0, 1]")
        for name in ("seq_len", "batch_size", "token_budget"):
            if getattr(self, name) < 1:
                raise TokfilterError(f"{name}: {getattr(self, name)} must be >= 1")
        if self.max_seen_factor < 1.0:
            raise TokfilterError(f"max_seen_factor: {self.max_seen_factor} must be >= 1 (seen tokens include the unmasked ones)")
        if not 0.0 <= self.warmup_fraction < 1.0:
            raise TokfilterError(f"warmup_fraction: {self.warmup_fraction} must be in [0, 1)")
        if self.precision not in PRECISIONS:
            raise TokfilterError(f"precision: {self.precision!r} is not one of {', '.join(PRECISIONS)}")


def learning_rate(progress: float, peak: float, warmup_fraction: float, min_ratio: float) -> float:
    """Linear warmup to ``peak`` then cosine decay to ``peak * min_ratio``; ``progress`` in [0, 1]."""
    progress = min(max(progress, 0.0), 1.0)
    if warmup_fraction > 0 and progress < warmup_fraction:
        return peak * progress / warmup_fraction
    decay = (progress - warmup_fraction) / (1.0 - warmup_fraction)
    return peak * (min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * decay)))


def make_optimizer(model: GPT, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only (not on norms), as in nanoGPT."""
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.95))


def count_unmasked(targets: torch.Tensor, loss_weights: torch.Tensor) -> int:
    """Targets that carry loss: positive weight and not padding."""
    return int(((loss_weights > 0) & (targets >= 0)).sum())


def repeat_epochs(make_batches: Callable[[int], Iterable[Batch]], start_epoch: int = 0, skip: int = 0
                  ) -> Iterator[tuple[int, int, Batch]]:
    """Yield (epoch, index in epoch, batch) forever over fresh passes of the data, starting after
    ``skip`` batches of ``start_epoch`` (to resume); fail if a pass is empty."""
    epoch = start_epoch
    while True:
        empty = True
        for index, batch in enumerate(make_batches(epoch)):
            empty = False
            if epoch == start_epoch and index < skip:
                continue
            yield epoch, index, batch
        if empty:
            raise TokfilterError("shards: a full pass produced no batches (seq_len larger than the data?)")
        epoch += 1


# Settings a resumed run must share with the checkpoint it continues.
RESUME_KEYS = ("size", "run_type", "threshold", "seq_len", "batch_size", "token_budget", "lr", "min_lr_ratio",
               "warmup_fraction", "weight_decay", "grad_clip", "seed")


def format_eta(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    return f"{int(seconds // 3600)}:{int(seconds % 3600 // 60):02d}:{int(seconds % 60):02d}"


def train(config: PretrainConfig, vocab_size: int, make_batches: Callable[[int], Iterable[Batch]]) -> dict:
    """Train until ``token_budget`` unmasked targets are seen (or ``max_seen_factor`` times as many
    targets in all); write model, log and summary.

    ``make_batches(epoch)`` returns one pass over the data as (input_ids, targets, loss_weights)
    batches of shape [B, T]; it is called again for each further epoch.
    """
    config.validate()
    precision = resolve_precision(config.precision, config.device)
    torch.manual_seed(config.seed)
    out = Path(config.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model = GPT(config_for_size(config.size, vocab_size, config.seq_len)).to(config.device)
    optimizer = make_optimizer(model, config.lr, config.weight_decay)
    state = {"step": 0, "unmasked_tokens": 0, "total_tokens": 0, "epoch": 0, "next_batch": 0, "losses": []}
    checkpoint_path = out / "checkpoint.pt"
    if config.resume and checkpoint_path.is_file():
        checkpoint = torch.load(checkpoint_path, map_location=config.device, weights_only=True)
        for key in RESUME_KEYS:
            if checkpoint["config"][key] != getattr(config, key):
                raise TokfilterError(f"--resume: {key} is {getattr(config, key)!r} but the checkpoint in {out} has "
                                     f"{checkpoint['config'][key]!r}")
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        state = checkpoint["state"]
        print(f"[{config.run_type} {config.size}] resuming at step {state['step']}", file=sys.stderr, flush=True)
    step, unmasked, total = state["step"], state["unmasked_tokens"], state["total_tokens"]
    epoch_seen, losses = state["epoch"], state["losses"]
    resumed_unmasked, resumed_total = unmasked, total
    seen_cap = config.max_seen_factor * config.token_budget
    start = time.perf_counter()
    log_path = out / "train_log.jsonl"
    with open(log_path, "a" if step else "w") as log:
        for epoch, index, (input_ids, targets, weights) in repeat_epochs(make_batches, epoch_seen, state["next_batch"]):
            if unmasked >= config.token_budget or total >= seen_cap:
                break
            epoch_seen = epoch
            input_ids, targets, weights = (t.to(config.device) for t in (input_ids, targets, weights))
            lr = learning_rate(unmasked / config.token_budget, config.lr, config.warmup_fraction, config.min_lr_ratio)
            for group in optimizer.param_groups:
                group["lr"] = lr
            with autocast(precision, config.device):
                loss = model.loss(input_ids, targets, weights.float())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            optimizer.step()
            step += 1
            unmasked += count_unmasked(targets, weights)
            total += int((targets >= 0).sum())
            losses.append(float(loss.detach()))
            if step % config.log_every == 0 or unmasked >= config.token_budget or total >= seen_cap:
                elapsed = time.perf_counter() - start
                rate = (unmasked - resumed_unmasked) / elapsed
                record = {
                    "step": step, "epoch": epoch, "lr": lr, "loss": sum(losses[-config.log_every:]) / len(losses[-config.log_every:]),
                    "unmasked_tokens": unmasked, "total_tokens": total, "unmasked_tokens_per_s": rate,
                    "total_tokens_per_s": (total - resumed_total) / elapsed, "elapsed_s": elapsed,
                }
                log.write(json.dumps(record) + "\n")
                log.flush()
                seen_rate = (total - resumed_total) / elapsed
                eta = min(max(0, config.token_budget - unmasked) / rate if rate > 0 else float("inf"),
                          max(0, seen_cap - total) / seen_rate if seen_rate > 0 else float("inf"))
                print(
                    f"[{config.run_type} {config.size}] step {step} loss {record['loss']:.3f} lr {lr:.2e} "
                    f"tokens {unmasked}/{config.token_budget} unmasked ({total} seen) "
                    f"{rate:,.0f} tok/s ETA {format_eta(eta)}",
                    file=sys.stderr, flush=True,
                )
            if step % config.checkpoint_every == 0:
                state = {"step": step, "unmasked_tokens": unmasked, "total_tokens": total, "epoch": epoch,
                         "next_batch": index + 1, "losses": losses[-config.log_every:]}
                tmp = checkpoint_path.with_name("checkpoint.pt.tmp")
                torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "state": state,
                            "config": {k: getattr(config, k) for k in RESUME_KEYS}}, tmp)
                tmp.replace(checkpoint_path)
    elapsed = time.perf_counter() - start
    if unmasked == 0:
        raise TokfilterError(f"threshold: {config.threshold} masks every target of the shards in {config.run_type} mode "
                             f"({total:,} seen); there is nothing to train on")
    if unmasked < config.token_budget:
        print(f"[{config.run_type} {config.size}] budget not reached: {unmasked:,} unmasked of {total:,} seen tokens "
              f"(the cap is {config.max_seen_factor:g}x the budget in seen tokens)", file=sys.stderr, flush=True)
    n_params = model.num_params()
    summary = {
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(config).items()},
        "steps": step,
        "unmasked_tokens": unmasked,
        "total_tokens": total,
        "masked_fraction": 1.0 - unmasked / total if total else 0.0,
        "budget_reached": unmasked >= config.token_budget,
        "non_embedding_params": n_params,
        "params": model.num_params(non_embedding=False),
        "compute_flops": 6 * n_params * unmasked,  # C = 6 N D, D = unmasked training tokens
        "final_train_loss": sum(losses[-config.log_every:]) / max(1, len(losses[-config.log_every:])),
        "precision": precision,
        "passes": epoch_seen + 1,  # passes over the shards begun: above 1 the data repeated
        "elapsed_s": elapsed,
    }
    save_model(model, out / "model.pt", extra=summary)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    checkpoint_path.unlink(missing_ok=True)  # the final model supersedes it
    return summary


def shard_batches(shards_dir: Path, config: PretrainConfig) -> Callable[[int], Iterable[Batch]]:
    """Batches from ``MaskedShards`` for the config's run type and threshold (the token threshold,
    or the document-score threshold for ``document``), reshuffled each epoch under the seed."""
    from tokfilter.clients import MaskedShards

    def make(epoch: int) -> Iterable[Batch]:
        dataset = MaskedShards(shards_dir, config.seq_len, config.threshold, config.run_type,
                               shuffle_seed=config.seed * 1000 + epoch)
        return torch.utils.data.DataLoader(dataset, batch_size=config.batch_size, drop_last=True)

    return make


def vocab_size_of(tokenizer_path: Path) -> int:
    from tokfilter.windows import load_tokenizer

    if not Path(tokenizer_path).is_file():
        raise TokfilterError(f"tokenizer: {tokenizer_path} not found (run `tokfilter train-tokenizer`)")
    return load_tokenizer(tokenizer_path).get_vocab_size()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = PretrainConfig(out_dir=Path())
    parser.add_argument("--shards", type=Path, default=paths.SHARDS_DIR / "train", help="masked shards directory")
    parser.add_argument("--tokenizer", type=Path, default=paths.TARGET_TOKENIZER, help="target tokenizer.json (vocab size)")
    parser.add_argument("--out", type=Path, required=True, help="run directory (model.pt, summary.json, train_log.jsonl)")
    parser.add_argument("--run-type", choices=RUN_TYPES, default=d.run_type)
    parser.add_argument("--threshold", type=float, default=d.threshold, help="p(forget) threshold (doc score for document)")
    parser.add_argument("--size", choices=list(SIZES), default=d.size)
    parser.add_argument("--seq-len", type=int, default=d.seq_len)
    parser.add_argument("--batch-size", type=int, default=d.batch_size)
    parser.add_argument("--token-budget", type=int, default=d.token_budget, help="unmasked target tokens to train on")
    parser.add_argument("--max-seen-factor", type=float, default=d.max_seen_factor,
                        help="stop after this many times the budget in seen tokens, reached or not")
    parser.add_argument("--lr", type=float, default=d.lr)
    parser.add_argument("--warmup-fraction", type=float, default=d.warmup_fraction)
    parser.add_argument("--seed", type=int, default=d.seed)
    parser.add_argument("--checkpoint-every", type=int, default=d.checkpoint_every)
    parser.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt after a crash or kill")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precision", choices=PRECISIONS, default=d.precision,
                        help="auto: bf16 autocast on AMX CPUs and bf16 GPUs, else fp32")


def config_from_args(args: argparse.Namespace) -> PretrainConfig:
    """The run settings the flags give."""
    return PretrainConfig(
        out_dir=args.out, size=args.size, run_type=args.run_type, threshold=args.threshold, seq_len=args.seq_len,
        batch_size=args.batch_size, token_budget=args.token_budget, max_seen_factor=args.max_seen_factor, lr=args.lr, warmup_fraction=args.warmup_fraction,
        seed=args.seed, checkpoint_every=args.checkpoint_every, device=args.device, resume=args.resume,
        precision=args.precision,
    )


def main(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    config.validate()
    if not Path(args.shards).is_dir():
        raise TokfilterError(f"shards: {args.shards} is not a directory (run `tokfilter filter`)")
    summary = train(config, vocab_size_of(args.tokenizer), shard_batches(args.shards, config))
    print(json.dumps({k: summary[k] for k in ("steps", "unmasked_tokens", "total_tokens", "budget_reached", "final_train_loss")}))
    return 0
