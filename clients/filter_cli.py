"""``tokfilter filter INPUT... --out DIR``: stream a corpus through the filter into masked shards.

Without ``--server`` the models in artifacts/models run in process (ONNX Runtime); with
``--server grpc://HOST:PORT`` they run on Triton. ``--engine ray`` runs the same steps on Ray Data.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from tokfilter import paths
from tokfilter.clients.engines.local import ON_ERROR, FilterSettings, run_local
from tokfilter.engines import ENGINES
from tokfilter.scoring import DEFAULT_MAX_BATCH_TOKENS, DEFAULT_REQUEST_TOKENS

DEFAULTS = FilterSettings()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="JSONL (.jsonl, .gz, .zst), Parquet, or '-' for stdin")
    parser.add_argument("--out", type=Path, default=paths.SHARDS_DIR, help="shard directory (default: %(default)s)")
    parser.add_argument("--server", help="Triton gRPC endpoint(s), comma-separated, e.g. grpc://127.0.0.1:8001 (default: in process, on --runtime)")
    parser.add_argument("--engine", choices=("local", "ray"), default="local")
    parser.add_argument("--ray-address", help="Ray cluster address for --engine ray (default: start a local instance)")
    parser.add_argument("--ray-actors", type=int, default=1, help="filter actors for --engine ray (default: %(default)s)")
    parser.add_argument("--target-tokenizer", default=DEFAULTS.target_tokenizer, help="tokenizer.json or .tiktoken of the pretraining")
    parser.add_argument("--token-model", default=DEFAULTS.token_model,
                        help="token model export (default: the joint model, %(default)s); a joint one (train-classifier --task "
                             "joint) gives the document score in the same pass: --doc-model is then unused and --doc-prefilter refused")
    parser.add_argument("--doc-model", default=DEFAULTS.doc_model, help="document model beside a token model (default: %(default)s)")
    parser.add_argument("--threshold", type=float, help="token threshold for the flagged counts (default: the model card's)")
    parser.add_argument("--doc-prefilter", type=float, metavar="LOW", help="documents with document score < LOW skip the token model")
    parser.add_argument("--runtime", choices=ENGINES, default=DEFAULTS.runtime,
                        help="what runs the models in process (default auto: by the CPU, tokfilter/engines.py); --engine is local|ray")
    parser.add_argument("--precision", choices=("fp32", "bf16", "fp16", "int8"), default=DEFAULTS.precision,
                        help="in process, the runtime's precision (default: the runtime's); with --server, the precision the server must serve (fp32|int8, default: what it serves)")
    parser.add_argument("--text-field", default=DEFAULTS.text_field)
    parser.add_argument("--id-field", default=DEFAULTS.id_field)
    parser.add_argument("--on-error", choices=ON_ERROR, default=DEFAULTS.on_error, help="malformed records: skip (counted) or fail")
    parser.add_argument("--buffer-docs", type=int, default=DEFAULTS.buffer_docs, help="documents sorted and batched together")
    parser.add_argument("--shard-tokens", type=int, default=DEFAULTS.shard_tokens, help="tokens per shard (about)")
    parser.add_argument("--max-batch-tokens", type=int, default=DEFAULTS.max_batch_tokens, help=f"padded tokens per model call in process (default {DEFAULT_MAX_BATCH_TOKENS}) or per request with --server (default {DEFAULT_REQUEST_TOKENS})")
    parser.add_argument("--max-in-flight", type=int, default=DEFAULTS.max_in_flight, help="concurrent requests to the server")
    parser.add_argument("--api-key", default=os.environ.get("TOKFILTER_API_KEY"), help="the server's API key (env TOKFILTER_API_KEY)")
    parser.add_argument("--retry-deadline", type=float, default=DEFAULTS.retry_deadline_s, metavar="SECONDS",
                        help="retry requests a restarting or healing server fails for this long (default: %(default)s)")
    parser.add_argument("--threads", type=int, help="threads per model in process (default: TOKFILTER_ORT_THREADS or all cores)")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out after a crash or kill")
    parser.add_argument("--dolma-attributes", metavar="NAME", help="also write Dolma attributes: each DATASET/documents/... "
                        "input gets DATASET/attributes/NAME/... with its spans and scores (docs/trainers.md)")
    parser.add_argument("--no-progress", action="store_true")


def settings_from_args(args: argparse.Namespace) -> FilterSettings:
    return FilterSettings(
        token_model=args.token_model, doc_model=args.doc_model, target_tokenizer=args.target_tokenizer,
        threshold=args.threshold, doc_prefilter=args.doc_prefilter, precision=args.precision, runtime=args.runtime,
        text_field=args.text_field, id_field=args.id_field, on_error=args.on_error, buffer_docs=args.buffer_docs,
        shard_tokens=args.shard_tokens, max_batch_tokens=args.max_batch_tokens, server=args.server,
        max_in_flight=args.max_in_flight, threads=args.threads, api_key=args.api_key, retry_deadline_s=args.retry_deadline,
        dolma_attributes=args.dolma_attributes,
    )


def summary(manifest: dict) -> str:
    c = manifest["counts"]
    tokens, flagged = c.get("tokens", 0), c.get("flagged", 0)
    line = (f"{len(manifest['shards'])} shards: {c.get('docs', 0)} documents, {tokens} tokens, {flagged} flagged "
            f"({flagged / max(tokens, 1):.1%} at threshold {manifest['threshold']:.3f}), {c.get('skipped', 0)} records skipped")
    if manifest["settings"]["doc_prefilter"] is not None:
        saved = 1 - c.get("token_model_tokens", 0) / max(c.get("classifier_tokens", 0), 1)
        line += f"; cascade: {c.get('prefiltered_docs', 0)} documents skipped the token model ({saved:.1%} of its compute)"
    runs_on = [f"{key} on {manifest[key]['runs_on']}" for key in ("token_model", "doc_model") if "runs_on" in manifest[key]]
    if runs_on:
        line += f"; {', '.join(runs_on)}"
    return line


def main(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    if args.engine == "ray":
        from tokfilter.clients.engines.ray import run_ray

        manifest = run_ray(args.inputs, args.out, settings, resume=args.resume, address=args.ray_address,
                           actors=args.ray_actors, show_progress=not args.no_progress)
    else:
        manifest = run_local(args.inputs, args.out, settings, resume=args.resume, show_progress=not args.no_progress)
    print(f"{args.out}: {summary(manifest)}")
    print(json.dumps({"out": str(args.out), "counts": manifest["counts"]}, sort_keys=True))
    return 0
