"""``tokfilter train-tokenizer``: the byte-level BPE the small GPT is pretrained with.

Trained on the corpus's train split, with the special tokens ``<|endoftext|>`` (between documents in
shards) and ``[hidden]`` (replaces flagged tokens in ``remove`` mode). Byte-level, so any text
round-trips and projection can map every byte back to a character.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Iterable, Iterator

from tokfilter import paths
from tokfilter.clients.projection import EOT_TOKEN
from tokfilter.clients.readers import check_inputs, iter_records
from tokfilter.errors import TokfilterError
from tokfilter.scoring import HIDDEN_TOKEN, safe_text

DEFAULT_VOCAB_SIZE = 8192


def train_target_tokenizer(texts: Iterable[str], out_path: Path | str, vocab_size: int = DEFAULT_VOCAB_SIZE) -> Path:
    """Train a byte-level BPE on ``texts`` and save it as ``out_path`` (a tokenizer.json)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    if vocab_size < 258:
        raise TokfilterError(f"vocab_size must be >= 258 (256 bytes + 2 special tokens), got {vocab_size}")
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=[EOT_TOKEN, HIDDEN_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    tokenizer.train_from_iterator((safe_text(t) for t in texts), trainer)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(out_path.name + ".tmp")
    tokenizer.save(str(tmp))
    tmp.replace(out_path)
    return out_path


def corpus_texts(inputs: list[str], text_field: str = "text") -> Iterator[str]:
    for i, path in enumerate(inputs):
        for record in iter_records(path, i, text_field=text_field):
            if record.error:
                raise TokfilterError(record.error)
            yield record.text


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", nargs="*", default=[str(paths.CORPUS_DIR / "train.jsonl")], metavar="INPUT",
                        help="training texts (JSONL/Parquet; default: the corpus train split)")
    parser.add_argument("--out", type=Path, default=paths.TARGET_TOKENIZER, help="tokenizer.json to write")
    parser.add_argument("--vocab-size", type=int, default=DEFAULT_VOCAB_SIZE)
    parser.add_argument("--text-field", default="text")


def main(args: argparse.Namespace) -> int:
    check_inputs(args.inputs)
    out = train_target_tokenizer(corpus_texts(args.inputs, args.text_field), args.out, args.vocab_size)
    from tokfilter.windows import load_tokenizer

    print(f"wrote {out} (vocab size {load_tokenizer(out).get_vocab_size()})")
    return 0
