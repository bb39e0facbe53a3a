"""Serving throughput: the same documents through four paths, in one run.

(a) in-process ONNX Runtime through the shared scoring pipeline (the limit), (b) FilterClient ->
Triton gRPC, (c) the REST gateway, (d) the transformers token-classification pipeline on the same
architecture in PyTorch (the baseline people reach for). Concurrency = requests in flight from
client threads, each request a fixed number of documents. Reported: tokens/s, documents/s, p50/p99
request latency, and the ratios b/a, c/b (the full system: token and document model, fp32, at each
path's best concurrency) and b/d.

(d) computes token probabilities only, so b/d is measured like for like: FilterClient with the
token model alone, at (b)'s best concurrency and at 4, served in fp32 and in int8 (``tokfilter serve
--precision int8``, whose F1 is within 0.01 of fp32's: benchmarks/results/classifiers.md). (d) runs
right after each of the two token-only blocks, and the better of its two runs is the baseline of
both b/d ratios: the load of this shared machine drifts, and the better (d) can only lower b/d.
Only the ratios of one run are the result; absolute numbers are indicative.

    python benchmarks/serve.py [--models-dir artifacts/models] [--docs 64] [--concurrency 1,2,4,8,16,32]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from tokfilter import paths
from tokfilter.errors import TokfilterError
from tokfilter.inference import OnnxWindowScorer, served_device
from tokfilter.modelcard import load_model_card
from tokfilter.scoring import DEFAULT_REQUEST_TOKENS, ScoringPipeline, max_batch_tokens_for

RESULTS_DIR = Path(__file__).resolve().parent / "results"
GOALS = {"b_over_a": 0.9, "b_over_d": 2.0, "gateway_overhead_max": 0.2}


def benchmark_texts(corpus_dir: Path, n_docs: int, seed: int = 0) -> list[str]:
    """Test documents as they are (short) plus one in four made long by joining ten of them."""
    path = corpus_dir / "test.jsonl"
    if not path.is_file():
        raise TokfilterError(f"corpus not found: {path} (run `tokfilter build-corpus` or pass --corpus)")
    docs = [json.loads(line)["text"] for line in path.open()]
    rng = random.Random(seed)
    texts = []
    for i in range(n_docs):
        texts.append(" ".join(rng.sample(docs, min(10, len(docs)))) if i % 4 == 0 else rng.choice(docs))
    return texts


def measure(name: str, score_request, requests: list[list[str]], concurrency: int, n_tokens: int) -> dict:
    """Send ``requests`` with ``concurrency`` in flight; throughput and request latencies."""
    latencies: list[float] = []
    lock = threading.Lock()

    def one(docs: list[str]) -> None:
        t0 = time.perf_counter()
        score_request(docs)
        with lock:
            latencies.append(time.perf_counter() - t0)

    score_request(requests[0])  # warm-up: sessions, connections, first allocations
    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(one, requests))
    elapsed = time.perf_counter() - start
    n_docs = sum(len(r) for r in requests)
    row = {
        "path": name, "concurrency": concurrency, "seconds": round(elapsed, 3),
        "tokens_per_s": round(n_tokens / elapsed, 1), "docs_per_s": round(n_docs / elapsed, 2),
        "p50_ms": round(1000 * float(np.percentile(latencies, 50)), 1), "p99_ms": round(1000 * float(np.percentile(latencies, 99)), 1),
    }
    print(f"{name:<28} c={concurrency:<3} {row['tokens_per_s']:>9.0f} tok/s {row['docs_per_s']:>7.1f} docs/s "
          f"p50 {row['p50_ms']:>8.1f} ms p99 {row['p99_ms']:>8.1f} ms", flush=True)
    return row


def best(rows: list[dict], prefix: str) -> dict:
    """The row of path ``prefix`` at its best concurrency."""
    return max((r for r in rows if r["path"].startswith(prefix)), key=lambda r: r["tokens_per_s"])


def transformers_baseline(token_dir: Path, threads: int, device: str):
    """A transformers token-classification pipeline on the token model's architecture in PyTorch
    (same encoder depth, same windowing), batch 8: what people would write without this project."""
    import torch
    from transformers import AutoConfig, AutoModelForTokenClassification, PreTrainedTokenizerFast, pipeline

    from tokfilter.training.classifiers import encoder_path

    torch.set_num_threads(threads)
    card = load_model_card(token_dir)
    depth = {"num_hidden_layers": card.num_layers} if card.num_layers else {}  # 0: the card does not say
    config = AutoConfig.from_pretrained(encoder_path(), num_labels=2, **depth)
    model = AutoModelForTokenClassification.from_pretrained(encoder_path(), config=config).eval()
    tokenizer = PreTrainedTokenizerFast(tokenizer_file=str(token_dir / "tokenizer.json"), model_max_length=card.max_length,
                                        cls_token="[CLS]", sep_token="[SEP]", pad_token="[PAD]", unk_token="[UNK]")
    classify = pipeline("token-classification", model=model, tokenizer=tokenizer, stride=card.stride,
                        device=0 if device == "cuda" else -1, aggregation_strategy="simple")
    return lambda docs: classify(docs, batch_size=8)


def run(args: argparse.Namespace) -> dict:
    from tokfilter.clients import FilterClient
    from tokfilter.server.model_repo import place_models
    from tokfilter.server.serve import running_server
    from tokfilter.server.triton import free_port

    import httpx

    token_dir, doc_dir = args.models_dir / "token_classifier", args.models_dir / "doc_classifier"
    device = served_device()  # what the Triton models will run on; every path uses the same device
    texts = benchmark_texts(args.corpus, args.docs)
    requests = [texts[i : i + args.docs_per_request] for i in range(0, len(texts), args.docs_per_request)]
    call_tokens = max_batch_tokens_for(device)  # per model call in process (the server picks the same)
    request_tokens = max(DEFAULT_REQUEST_TOKENS, call_tokens)  # per FilterClient request
    local = ScoringPipeline.from_model_dirs(token_dir, doc_dir, make_scorer=lambda d: OnnxWindowScorer(d, threads=args.threads, device=device),
                                            max_batch_tokens=call_tokens)
    n_tokens = int(sum(len(e.ids) for e in local.encode(texts)))
    print(f"{len(texts)} documents, {n_tokens} tokens, {len(requests)} requests of {args.docs_per_request} docs; models {args.models_dir}", flush=True)
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    rows = []
    repo = args.repo_dir
    place_models(args.models_dir, repo)
    ports = {"grpc_port": free_port(), "http_port": free_port(), "metrics_port": free_port(), "gateway_port": free_port()}
    with running_server(repo, ort_threads=args.threads, **ports) as ep:
        client = FilterClient(ep.grpc_url, token_dir, max_in_flight=max(concurrencies), max_batch_tokens=request_tokens)
        http = httpx.Client(timeout=600, limits=httpx.Limits(max_connections=64))
        remote, reference = client.filter(texts[:8]), local.score(texts[:8])
        max_diff = max(float(np.abs(r.token_probs - l.token_probs).max(initial=0)) for r, l in zip(remote, reference))

        def rest(docs: list[str]) -> None:
            body = {"documents": [{"id": str(i), "text": t} for i, t in enumerate(docs)]}
            http.post(f"{ep.gateway_url}/v1/filter", json=body).raise_for_status()

        for c in concurrencies:  # interleaved, so that load from other users hits every path alike
            rows.append(measure("a: in-process ORT", local.score, requests, c, n_tokens))
            rows.append(measure("b: FilterClient->Triton gRPC", client.filter, requests, c, n_tokens))
            rows.append(measure("c: REST gateway", rest, requests, c, n_tokens))
        client.close()
        token_concurrencies = sorted({4, best(rows, "b:")["concurrency"]})  # a moderate one and (b)'s best
        baseline = transformers_baseline(token_dir, args.threads, device)
        with FilterClient(ep.grpc_url, token_dir, max_in_flight=max(concurrencies), max_batch_tokens=request_tokens, use_doc_model=False) as token_only:
            for c in token_concurrencies:
                rows.append(measure("b-token: token model only, fp32", token_only.filter, requests, c, n_tokens))
        rows.append(measure("d: transformers pipeline", baseline, requests, 1, n_tokens))
    int8_ports = {"grpc_port": free_port(), "http_port": free_port(), "metrics_port": free_port()}
    with running_server(repo, ort_threads=args.threads, precision="int8", gateway_port=None, **int8_ports) as ep:
        with FilterClient(ep.grpc_url, token_dir, max_in_flight=max(concurrencies), max_batch_tokens=request_tokens, use_doc_model=False) as token_only:
            for c in token_concurrencies:
                rows.append(measure("b-token-int8: token model only, int8", token_only.filter, requests, c, n_tokens))
        rows.append(measure("d: transformers pipeline", baseline, requests, 1, n_tokens))

    a, b, c, d = best(rows, "a:"), best(rows, "b:"), best(rows, "c:"), best(rows, "d:")
    b_token, b_token_int8 = best(rows, "b-token:"), best(rows, "b-token-int8:")
    ratios = {"b_over_a": round(b["tokens_per_s"] / a["tokens_per_s"], 3), "c_over_b": round(c["tokens_per_s"] / b["tokens_per_s"], 3),
              "b_over_d": round(b_token["tokens_per_s"] / d["tokens_per_s"], 3),
              "b_int8_over_d": round(b_token_int8["tokens_per_s"] / d["tokens_per_s"], 3)}
    card = load_model_card(token_dir)
    return {
        "benchmark": "serve", "models_dir": str(args.models_dir), "model": {"name": card.name, "layers": card.num_layers,
        "max_length": card.max_length, "stride": card.stride, "encoder": card.encoder},
        "documents": len(texts), "tokens": n_tokens, "docs_per_request": args.docs_per_request, "ort_threads": args.threads,
        "max_batch_tokens": call_tokens, "request_tokens": request_tokens,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "load_avg_start": args.load_start,
                    "load_avg_end": list(os.getloadavg())},
        "max_abs_diff_triton_vs_in_process": max_diff, "rows": rows,
        "best": {"a": a, "b": b, "c": c, "d": d, "b_token": b_token, "b_token_int8": b_token_int8}, "ratios": ratios,
        "goals": {"b_over_a>=0.9": ratios["b_over_a"] >= GOALS["b_over_a"], "b_over_d>=2": ratios["b_over_d"] >= GOALS["b_over_d"],
                  "b_int8_over_d>=2": ratios["b_int8_over_d"] >= GOALS["b_over_d"],
                  "gateway_overhead<=20%": ratios["c_over_b"] >= 1 - GOALS["gateway_overhead_max"]},
        "device": device,
        "gpu": (f"measured above on {gpu_name()}" if device == "cuda" else
                "pending: no GPU in this run; on a CUDA host install onnxruntime-gpu (the python-backend models then use "
                "the CUDA execution provider) and rerun this script"),
    }


def gpu_name() -> str:
    import torch

    return torch.cuda.get_device_name() if torch.cuda.is_available() else "a CUDA device"


def markdown(result: dict) -> str:
    lines = [
        "# Serving throughput (benchmarks/serve.py)", "",
        f"Models: `{result['models_dir']}` ({result['model']['layers']} layers, max_length {result['model']['max_length']}); "
        f"{result['documents']} documents / {result['tokens']} tokens, {result['docs_per_request']} documents per request, "
        f"device {result['device']}, ORT threads {result['ort_threads']}, {result['max_batch_tokens']} padded tokens per model call, "
        f"{result['request_tokens']} per FilterClient request; {result['machine']['cpus']} CPUs shared with other jobs "
        f"(load average {result['machine']['load_avg_start'][0]:.1f} at start, {result['machine']['load_avg_end'][0]:.1f} at end).",
        f"Triton vs in-process scores: max |diff| = {result['max_abs_diff_triton_vs_in_process']:.2e}.", "",
        "| path | concurrency | tokens/s | docs/s | p50 ms | p99 ms |", "|---|---:|---:|---:|---:|---:|",
    ]
    lines += [f"| {r['path']} | {r['concurrency']} | {r['tokens_per_s']:.0f} | {r['docs_per_s']:.1f} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} |" for r in result["rows"]]
    r = result["ratios"]
    lines += ["", "| ratio (best concurrency of each) | value | goal | met |", "|---|---:|---:|:-:|",
              f"| b/a (Triton gRPC / in-process) | {r['b_over_a']:.2f} | >= 0.9 | {'yes' if result['goals']['b_over_a>=0.9'] else 'no'} |",
              f"| b/d, token model only, fp32 (Triton gRPC / transformers) | {r['b_over_d']:.2f} | >= 2 | {'yes' if result['goals']['b_over_d>=2'] else 'no'} |",
              f"| b/d, token model only, int8 served (Triton gRPC / transformers) | {r['b_int8_over_d']:.2f} | >= 2 | {'yes' if result['goals']['b_int8_over_d>=2'] else 'no'} |",
              f"| c/b (gateway / Triton gRPC) | {r['c_over_b']:.2f} | >= 0.8 | {'yes' if result['goals']['gateway_overhead<=20%'] else 'no'} |",
              "", f"GPU: {result['gpu']}.", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models-dir", type=Path, default=paths.MODELS_DIR)
    parser.add_argument("--corpus", type=Path, default=paths.CORPUS_DIR)
    parser.add_argument("--docs", type=int, default=64)
    parser.add_argument("--docs-per-request", type=int, default=2)
    parser.add_argument("--concurrency", default="1,2,4,8,16,32")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="ONNX Runtime / torch threads")
    parser.add_argument("--repo-dir", type=Path, default=paths.ARTIFACTS / "bench_model_repo", help="model repository the benchmark fills")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR)
    args = parser.parse_args()
    for model in ("token_classifier", "doc_classifier"):
        if not (args.models_dir / model / "model.onnx").is_file():
            raise SystemExit(f"no exported {model} under {args.models_dir} (run `tokfilter train-classifier` or pass --models-dir)")
    args.load_start = list(os.getloadavg())
    result = run(args)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "serve.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "serve.md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
