"""``tokfilter demo``: build what is missing, then run the whole system once and say what it did.

Every build step is the same ``tokfilter`` command a user would type, echoed before it runs; steps
whose output already exists are skipped. Then a real Triton server is started, sample documents
from the held-out test split are filtered through it (gRPC and the REST gateway), the test split
is written to masked shards through the server, and everything is stopped.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from pathlib import Path

from tokfilter import cli, paths
from tokfilter.errors import TokfilterError

SAMPLE_DOCS = 3
THROUGHPUT_DOCS = 200


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--size", default="default", help="corpus size when it has to be built: tiny, small or default")
    parser.add_argument("--shards", type=Path, default=paths.SHARDS_DIR / "demo", help="where the test split's shards go")


def run_step(argv: list[str]) -> None:
    """Run one ``tokfilter`` command in process, as a user would type it."""
    print(f"\n$ tokfilter {' '.join(argv)}", flush=True)
    started = time.perf_counter()
    rc = cli.main(argv)
    if rc:
        raise TokfilterError(f"demo step `tokfilter {' '.join(argv)}` failed (exit code {rc})")
    print(f"  ({time.perf_counter() - started:.0f} s)", flush=True)


def skip(what: str, path: Path) -> None:
    print(f"\n# {what}: {path} exists, skipped (delete it to rebuild)", flush=True)


def excerpt(text: str, focus: int, width: int) -> tuple[int, int]:
    """Bounds of a ``width``-character excerpt of ``text`` that starts a little before ``focus``."""
    start = max(0, min(focus - width // 4, len(text) - width))
    return start, min(len(text), start + width)


def highlight(text: str, spans, width: int = 500) -> str:
    """An excerpt around the first flagged span, spans marked: reverse video on a terminal, [[...]]
    otherwise."""
    on, off = ("\033[7m", "\033[0m") if sys.stdout.isatty() else ("[[", "]]")
    start, end = excerpt(text, spans[0].start if spans else 0, width)
    out, pos = [], start
    for span in spans:
        if span.end <= start or span.start >= end:
            continue
        s, e = max(span.start, start), min(span.end, end)
        out += [text[pos:s], on, text[s:e], off]
        pos = e
    out.append(text[pos:end])
    return ("... " if start else "") + "".join(out) + (" ..." if end < len(text) else "")


def build_missing(size: str) -> None:
    corpus_manifest = paths.CORPUS_DIR / "manifest.json"
    if corpus_manifest.exists():
        skip("corpus", paths.CORPUS_DIR)
    else:
        run_step(["build-corpus", "--size", size])
    if (paths.JOINT_MODEL_DIR / "model.int8.onnx").exists():
        skip("joint classifier", paths.JOINT_MODEL_DIR)
    else:  # one encoder with token and document heads: every later step scores both from one pass
        run_step(["train-classifier", "--task", "joint"])
    run_step(["eval-classifier"])
    if paths.TARGET_TOKENIZER.exists():
        skip("target tokenizer", paths.TARGET_TOKENIZER)
    else:
        run_step(["train-tokenizer"])
    run_step(["model-repo"])


def filter_through_server(shards_dir: Path) -> None:
    import httpx

    from tokfilter.clients import FilterClient
    from tokfilter.server.serve import running_server
    from tokfilter.server.triton import free_port
    from tokfilter.training.corpus.build import read_corpus

    test_split = paths.CORPUS_DIR / "test.jsonl"
    ports = {name: free_port() for name in ("grpc_port", "http_port", "metrics_port", "gateway_port")}
    print("\n# starting Triton and the REST gateway", flush=True)
    with running_server(**ports) as endpoints:
        print(f"  gRPC {endpoints.grpc_url}  HTTP {endpoints.http_url}  metrics {endpoints.metrics_url}  gateway {endpoints.gateway_url}")
        docs = list(itertools.islice(read_corpus(test_split), THROUGHPUT_DOCS))
        mixed = [d for d in docs if d["meta"]["domain"] == "mixed"][:SAMPLE_DOCS] or docs[:SAMPLE_DOCS]
        with FilterClient(endpoints.grpc_url) as client:
            print(f"\n# {len(mixed)} mixed test documents through FilterClient (gRPC), threshold {client.threshold:.3f}")
            for doc, result in zip(mixed, client.filter([d["text"] for d in mixed])):
                print(f"\n[{doc['id']}] doc score {result.doc_score:.3f}, {len(result.spans)} spans, "
                      f"{result.flagged_fraction:.0%} of tokens flagged")
                print("  " + highlight(doc["text"], result.spans))
            started = time.perf_counter()
            results = client.filter([d["text"] for d in docs])
            seconds = time.perf_counter() - started
            tokens = sum(len(r.token_ids) for r in results)
            print(f"\n# throughput: {len(docs)} test documents, {tokens} tokens in {seconds:.1f} s = "
                  f"{tokens / seconds:,.0f} tokens/s, {len(docs) / seconds:.1f} documents/s (gRPC, 2 CPU cores)")
        reply = httpx.post(f"{endpoints.gateway_url}/v1/filter", timeout=60,
                           json={"documents": [{"id": mixed[0]["id"], "text": mixed[0]["text"]}], "mode": "remove"})
        reply.raise_for_status()
        removed = reply.json()["results"][0]["text"]
        start, end = excerpt(removed, max(removed.find("[hidden]"), 0), 400)
        print(f"\n# REST gateway, POST /v1/filter mode=remove:\n  {'... ' if start else ''}{removed[start:end]}"
              f"{' ...' if end < len(removed) else ''}")
        run_step(["filter", str(test_split), "--server", endpoints.grpc_url, "--out", str(shards_dir), "--no-progress"])
    print("\n# server stopped")


def main(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    build_missing(args.size)
    if args.shards.exists():
        import shutil

        shutil.rmtree(args.shards)
    filter_through_server(args.shards)
    print(f"\n# demo done in {time.perf_counter() - started:.0f} s. Shards of the test split: {args.shards}")
    print("  next: tokfilter serve | tokfilter filter CORPUS.jsonl --out DIR | tokfilter experiment smoke")
    return 0
