"""``tokfilter inspect SHARDS``: documents of written shards in the training tokenizer's tokens, with
the tokens a training run skips marked, in the terminal.

What is marked is what ``MaskedShards`` does with the same threshold: in ``mask`` mode the flagged
target tokens (their loss weight is 0), in ``remove`` mode the ``[hidden]`` ids that replace them.
ANSI colour when stdout is a terminal (each flagged token on a red background, alternating shades so
that token boundaries show); otherwise plain markers in ``mask`` mode: ``[[ to ]]`` around a run of
flagged tokens, ``|`` between its tokens (``remove`` mode prints the text the model reads). Terminal only: the browser page at the gateway's ``/`` shows raw text.
"""

from __future__ import annotations

import argparse
import codecs
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tokfilter.clients.projection import TargetTokenizer
from tokfilter.clients.shards.masked import flagged_tokens
from tokfilter.clients.shards.writer import open_shards
from tokfilter.errors import TokfilterError
from tokfilter.scoring import HIDDEN_TOKEN

TOKEN_MODES = ("mask", "remove")  # the MaskedShards modes that act on single tokens
# two shades of red for flagged tokens, alternating so that token boundaries stay visible
ANSI_FLAGGED = ("\x1b[1;97;41m", "\x1b[1;97;48;5;124m")
ANSI_HEADER = "\x1b[1;36m"
ANSI_RESET = "\x1b[0m"
PLAIN_OPEN, PLAIN_CLOSE, PLAIN_BETWEEN = "[[", "]]", "|"


@dataclass(frozen=True)
class ShardDocument:
    """One document of a shard: its target ids, their float16 probabilities and its document score."""

    doc_id: str
    shard: str
    ids: np.ndarray
    probs: np.ndarray
    doc_score: float


def iter_documents(shards: list) -> list[ShardDocument]:
    return [
        ShardDocument(doc_id, s.name, np.asarray(s.ids[a : a + n]), np.asarray(s.probs[a : a + n]), float(score))
        for s in shards
        for doc_id, a, n, score in zip(s.doc_ids, s.starts, s.lengths, s.doc_scores)
    ]


def token_pieces(target: TargetTokenizer, ids: np.ndarray) -> list[str]:
    """The text of each token; a character whose bytes span several tokens is shown with the last."""
    decoder = codecs.getincrementaldecoder("utf-8")("replace")
    pieces = [decoder.decode(target.token_bytes(int(i))) for i in ids]
    if pieces:
        pieces[-1] += decoder.decode(b"", final=True)
    return pieces


def render(pieces: list[str], flagged: np.ndarray, mode: str, color: bool) -> str:
    """The document's tokens, flagged ones marked (``mask``) or shown as ``[hidden]`` (``remove``;
    without colour exactly the text the model reads)."""
    markers = not color and mode == "mask"
    out: list[str] = []
    run = 0  # position in the current run of flagged tokens
    for piece, is_flagged in zip(pieces, flagged):
        if not is_flagged:
            if run and markers:
                out.append(PLAIN_CLOSE)
            run = 0
            out.append(piece)
            continue
        shown = HIDDEN_TOKEN if mode == "remove" else piece
        if color:
            out.append(f"{ANSI_FLAGGED[run % 2]}{shown}{ANSI_RESET}")
        elif markers:
            out.append((PLAIN_OPEN if run == 0 else PLAIN_BETWEEN) + shown)
        else:
            out.append(shown)
        run += 1
    if run and markers:
        out.append(PLAIN_CLOSE)
    return "".join(out)


def header(doc: ShardDocument, flagged: np.ndarray, threshold: float, mode: str) -> str:
    n, k = len(doc.ids), int(flagged.sum())
    verb = "masked" if mode == "mask" else "hidden"
    dropped = " (dropped in document mode)" if doc.doc_score >= threshold else ""
    return (f"── {doc.doc_id} · {doc.shard} · {n} tokens · {k} {verb} ({k / max(n, 1):.1%}) at threshold {threshold:.3f}"
            f" · document score {doc.doc_score:.3f}{dropped} ──")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("shards", type=Path, metavar="SHARDS", help="shard directory written by `tokfilter filter`")
    parser.add_argument("--doc", action="append", metavar="ID", help="document id to show (repeatable; default: the first --limit)")
    parser.add_argument("--limit", type=int, default=3, help="documents shown without --doc (default: %(default)s)")
    parser.add_argument("--threshold", type=float, help="token threshold (default: the one the shards were written with)")
    parser.add_argument("--mode", choices=TOKEN_MODES, default="mask", help="mask: flagged tokens marked; remove: shown as [hidden]")
    parser.add_argument("--target-tokenizer", type=Path, help="the training tokenizer (default: the path in the manifest)")
    parser.add_argument("--color", choices=("auto", "always", "never"), default="auto",
                        help="ANSI colour: auto = when stdout is a terminal and NO_COLOR is unset")


def main(args: argparse.Namespace) -> int:
    manifest, shards = open_shards(args.shards)
    threshold = float(manifest["threshold"]) if args.threshold is None else args.threshold
    if not 0.0 <= threshold <= 1.0:
        raise TokfilterError(f"--threshold must be in [0, 1], got {threshold}")
    if args.limit < 1:
        raise TokfilterError(f"--limit must be >= 1, got {args.limit}")
    target = TargetTokenizer(args.target_tokenizer or manifest["target_tokenizer"]["path"])
    if target.sha256 != manifest["target_tokenizer"]["sha256"]:
        raise TokfilterError(f"{target.path} is not the tokenizer {args.shards} was written with "
                             f"(sha256 {target.sha256[:12]}, the manifest's {manifest['target_tokenizer']['sha256'][:12]})")
    if args.mode == "remove" and manifest.get("hidden_id") is None:
        raise TokfilterError(f"--mode remove needs a {HIDDEN_TOKEN} token, but the target tokenizer of {args.shards} has none")
    documents = iter_documents(shards)
    if args.doc:
        by_id = {d.doc_id: d for d in documents}
        missing = [d for d in args.doc if d not in by_id]
        if missing:
            raise TokfilterError(f"--doc {missing[0]!r} is not in {args.shards} ({len(by_id)} documents, e.g. "
                                 f"{', '.join(list(by_id)[:3])})")
        documents = [by_id[d] for d in args.doc]
    else:
        documents = documents[: args.limit]
    color = args.color == "always" or (args.color == "auto" and sys.stdout.isatty() and not os.environ.get("NO_COLOR"))
    for doc in documents:
        flagged = flagged_tokens(doc.probs, threshold)
        title = header(doc, flagged, threshold, args.mode)
        print(f"{ANSI_HEADER}{title}{ANSI_RESET}" if color else title)
        print(render(token_pieces(target, doc.ids), flagged, args.mode, color))
        print()
    return 0
