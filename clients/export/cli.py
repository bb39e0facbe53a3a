"""``tokfilter export SHARDS --format F --mode M --out DIR``: masked shards in a trainer's own format.

Formats and where the mask lives are in docs/trainers.md; the modes are MaskedShards' (nomask,
document, mask, remove), with its thresholds (``--threshold`` default: the manifest's).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from tokfilter.clients.export import FORMATS, export_shards
from tokfilter.clients.shards.masked import MODES


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("shards", type=Path, metavar="SHARDS", help="shard directory written by `tokfilter filter`")
    parser.add_argument("--format", required=True, choices=FORMATS, dest="fmt")
    parser.add_argument("--mode", required=True, choices=MODES)
    parser.add_argument("--threshold", type=float, help="token threshold (default: the one the shards were written with)")
    parser.add_argument("--doc-threshold", type=float, help="document threshold of --mode document (default: --threshold)")
    parser.add_argument("--out", type=Path, required=True, help="output directory (new or empty)")
    parser.add_argument("--no-progress", action="store_true")


def main(args: argparse.Namespace) -> int:
    record = export_shards(args.shards, args.out, args.fmt, args.mode, args.threshold, args.doc_threshold,
                           progress=not args.no_progress)
    print(f"{record['documents']:,} documents, {record['tokens']:,} tokens ({record['masked_tokens']:,} masked) "
          f"written to {args.out} as {args.fmt}, mode {args.mode}, threshold {record['threshold']}")
    return 0
