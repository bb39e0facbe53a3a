"""Serving throughput: the same documents through four paths, in one run.

(a) in-process ONNX Runtime through the shared scoring pipeline (the limit), (b) FilterClient ->
Triton gRPC, (c) the REST gateway, (d) the transformers token-classification pipeline on the same
architecture in PyTorch (the baseline people reach for). Concurrency = requests in flight from
client threads, each request a fixed number of documents. Reported: tokens/s, documents/s, p50/p99
request latency, and the ratios b/a, c/b (the full system: token and document model, fp32, at each
path's best concurrency) and b/d.

One Python client process tops out where its own tokenizing, windowing and stitching do (in
process, (a) meets the same ceiling), which on a GPU is below what the server can take. With
``--client-processes P`` the benchmark also measures (b) from P client processes at once (the way a
data team scales out), each running (b)'s best concurrency: their tokens over the wall time from a
common start.

(d) computes token probabilities only, so b/d is measured like for like: FilterClient with the
token model alone, at (b)'s best concurrency and at 4, served in fp32 and in int8 (``tokfilter serve
--precision int8``, whose F1 is within 0.01 of fp32's: benchmarks/results/classifiers.md). (d) runs
right after each of the two token-only blocks, and the better of its two runs is the baseline of
both b/d ratios: the load of this shared machine drifts, and the better (d) can only lower b/d.
Only the ratios of one run are the result; absolute numbers are indicative.

On a CUDA host (onnxruntime-gpu installed) every path runs on the GPU, the int8 block is left out
(int8 is the CPU precision: ONNX Runtime's CUDA provider has no kernels for its integer matmuls), and
the results go to serve_cuda.json/.md beside the CPU ones. ``--skip-baseline`` leaves out (d) and
the b/d ratios, for a host without the pretrained encoder package that (d) loads.

    python benchmarks/serve.py [--models-dir artifacts/models] [--docs 64] [--concurrency 1,2,4,8,16,32]
    python benchmarks/serve.py --joint   # the joint model (models-dir/joint_classifier) in both slots -> serve_joint.md
    python benchmarks/serve.py --docs 2048 --docs-per-request 16 --concurrency 1,4,16 --instances 2 --client-processes 4   # a GPU
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from tokfilter import paths
from tokfilter.inference import OnnxWindowScorer, import_onnxruntime, served_device
from tokfilter.modelcard import load_model_card
from tokfilter.scoring import DEFAULT_REQUEST_TOKENS, ScoringPipeline, max_batch_tokens_for
from tokfilter.training.corpus.build import read_corpus

RESULTS_DIR = Path(__file__).resolve().parent / "results"
GOALS = {"b_over_a": 0.9, "b_over_d": 2.0, "gateway_overhead_max": 0.2}
GPU_AIM_TOKENS_PER_S = 1_000_000  # (b) on one H100/H200, full system (token and document model)


def benchmark_texts(corpus_dir: Path, n_docs: int, seed: int = 0) -> list[str]:
    """Test documents as they are (short) plus one in four made long by joining ten of them."""
    docs = [doc["text"] for doc in read_corpus(corpus_dir / "test.jsonl")]
    rng = random.Random(seed)
    texts = []
    for i in range(n_docs):
        texts.append(" ".join(rng.sample(docs, min(10, len(docs)))) if i % 4 == 0 else rng.choice(docs))
    return texts


def send_requests(score_request, requests: list[list[str]], concurrency: int) -> list[float]:
    """Send ``requests`` with ``concurrency`` in flight; the latency of each."""
    latencies: list[float] = []
    lock = threading.Lock()

    def one(docs: list[str]) -> None:
        t0 = time.perf_counter()
        score_request(docs)
        with lock:
            latencies.append(time.perf_counter() - t0)

    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(one, requests))
    return latencies


def throughput_row(name: str, concurrency: int, elapsed: float, latencies: list[float], requests: list[list[str]],
                   n_tokens: int) -> dict:
    """One result row (tokens/s, documents/s, p50/p99 request latency), printed as it is made."""
    n_docs = sum(len(r) for r in requests)
    row = {
        "path": name, "concurrency": concurrency, "seconds": round(elapsed, 3),
        "tokens_per_s": round(n_tokens / elapsed, 1), "docs_per_s": round(n_docs / elapsed, 2),
        "p50_ms": round(1000 * float(np.percentile(latencies, 50)), 1), "p99_ms": round(1000 * float(np.percentile(latencies, 99)), 1),
    }
    print(f"{name:<28} c={concurrency:<3} {row['tokens_per_s']:>9.0f} tok/s {row['docs_per_s']:>7.1f} docs/s "
          f"p50 {row['p50_ms']:>8.1f} ms p99 {row['p99_ms']:>8.1f} ms", flush=True)
    return row


def measure(name: str, score_request, requests: list[list[str]], concurrency: int, n_tokens: int) -> dict:
    """Send ``requests`` with ``concurrency`` in flight, after one warm-up request."""
    score_request(requests[0])  # warm-up: sessions, connections, first allocations
    start = time.perf_counter()
    latencies = send_requests(score_request, requests, concurrency)
    return throughput_row(name, concurrency, time.perf_counter() - start, latencies, requests, n_tokens)


def _client_process(grpc_url: str, token_dir: Path, request_tokens: int, concurrency: int, requests: list[list[str]],
                    ready, start, results) -> None:
    """One client process of ``measure_client_processes``: warm up, wait for the common start, send
    its requests with ``concurrency`` in flight, report its request latencies."""
    from tokfilter.clients import FilterClient

    with FilterClient(grpc_url, token_dir, max_in_flight=concurrency, max_batch_tokens=request_tokens) as client:
        client.filter(requests[0])
        ready.put(os.getpid())
        start.wait()
        latencies = send_requests(client.filter, requests, concurrency)
    results.put(latencies)


def measure_client_processes(grpc_url: str, token_dir: Path, request_tokens: int, requests: list[list[str]],
                             processes: int, concurrency: int, n_tokens: int) -> dict:
    """(b) from ``processes`` FilterClient processes at once, requests dealt round-robin."""
    context = multiprocessing.get_context("spawn")  # no threads or gRPC channels inherited by fork
    ready, results, start = context.Queue(), context.Queue(), context.Event()
    workers = [context.Process(target=_client_process, args=(grpc_url, token_dir, request_tokens, concurrency,
                                                             requests[i::processes], ready, start, results))
               for i in range(processes)]
    for worker in workers:
        worker.start()
    for _ in workers:
        ready.get(timeout=300)
    t0 = time.perf_counter()
    start.set()
    latencies = [latency for _ in workers for latency in results.get(timeout=1200)]
    elapsed = time.perf_counter() - t0
    for worker in workers:
        worker.join()
    return throughput_row(f"b-procs: FilterClient in {processes} processes", processes * concurrency, elapsed, latencies,
                          requests, n_tokens)


def best(rows: list[dict], prefix: str) -> dict:
    """The row of path ``prefix`` at its best concurrency."""
    return max((r for r in rows if r["path"].startswith(prefix)), key=lambda r: r["tokens_per_s"])


def transformers_baseline(token_dir: Path, threads: int, device: str):
    """A transformers token-classification pipeline on the token model's architecture in PyTorch
    (same encoder depth, same windowing), batch 8: what people would write without this project."""
    import torch
    from transformers import AutoConfig, AutoModelForTokenClassification, PreTrainedTokenizerFast, pipeline

    from tokfilter.training.classifier.train import encoder_path

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

    token_dir = args.models_dir / ("joint_classifier" if args.joint else "token_classifier")
    doc_dir = args.models_dir / "doc_classifier"  # unused by a joint token_dir: its own head scores documents
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
    place_models(args.models_dir, repo, joint=args.joint)
    ports = {"grpc_port": free_port(), "http_port": free_port(), "metrics_port": free_port(), "gateway_port": free_port()}
    with running_server(repo, ort_threads=args.threads, instances=args.instances, **ports) as ep:
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
        if args.client_processes > 1:
            rows.append(measure_client_processes(ep.grpc_url, token_dir, request_tokens, requests, args.client_processes,
                                                 best(rows, "b:")["concurrency"], n_tokens))
        token_concurrencies = sorted({4, best(rows, "b:")["concurrency"]})  # a moderate one and (b)'s best
        baseline = None if args.skip_baseline else transformers_baseline(token_dir, args.threads, device)
        with FilterClient(ep.grpc_url, token_dir, max_in_flight=max(concurrencies), max_batch_tokens=request_tokens, use_doc_model=False) as token_only:
            for c in token_concurrencies:
                rows.append(measure("b-token: token model only, fp32", token_only.filter, requests, c, n_tokens))
        if baseline:
            rows.append(measure("d: transformers pipeline", baseline, requests, 1, n_tokens))
    if device == "cpu":
        int8_ports = {"grpc_port": free_port(), "http_port": free_port(), "metrics_port": free_port()}
        with running_server(repo, ort_threads=args.threads, instances=args.instances, precision="int8", gateway_port=None, **int8_ports) as ep:
            with FilterClient(ep.grpc_url, token_dir, max_in_flight=max(concurrencies), max_batch_tokens=request_tokens, use_doc_model=False) as token_only:
                for c in token_concurrencies:
                    rows.append(measure("b-token-int8: token model only, int8", token_only.filter, requests, c, n_tokens))
            if baseline:
                rows.append(measure("d: transformers pipeline", baseline, requests, 1, n_tokens))

    a, b, c, b_token = best(rows, "a:"), best(rows, "b:"), best(rows, "c:"), best(rows, "b-token:")
    d = best(rows, "d:") if baseline else None
    b_token_int8 = best(rows, "b-token-int8:") if device == "cpu" else None
    ratios = {"b_over_a": round(b["tokens_per_s"] / a["tokens_per_s"], 3), "c_over_b": round(c["tokens_per_s"] / b["tokens_per_s"], 3)}
    goals = {"b_over_a>=0.9": ratios["b_over_a"] >= GOALS["b_over_a"],
             "gateway_overhead<=20%": ratios["c_over_b"] >= 1 - GOALS["gateway_overhead_max"]}
    if d:
        ratios["b_over_d"] = round(b_token["tokens_per_s"] / d["tokens_per_s"], 3)
        goals["b_over_d>=2"] = ratios["b_over_d"] >= GOALS["b_over_d"]
        if b_token_int8:
            ratios["b_int8_over_d"] = round(b_token_int8["tokens_per_s"] / d["tokens_per_s"], 3)
            goals["b_int8_over_d>=2"] = ratios["b_int8_over_d"] >= GOALS["b_over_d"]
    card = load_model_card(token_dir)
    return {
        "benchmark": "serve", "models_dir": str(args.models_dir), "joint": args.joint, "model": {"name": card.name, "layers": card.num_layers,
        "max_length": card.max_length, "stride": card.stride, "encoder": card.encoder},
        "documents": len(texts), "tokens": n_tokens, "docs_per_request": args.docs_per_request, "ort_threads": args.threads,
        "max_batch_tokens": call_tokens, "request_tokens": request_tokens, "instances": args.instances,
        "client_processes": args.client_processes,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "load_avg_start": args.load_start,
                    "load_avg_end": list(os.getloadavg())},
        "max_abs_diff_triton_vs_in_process": max_diff, "rows": rows,
        "best": {"a": a, "b": b, "c": c, "d": d, "b_token": b_token, "b_token_int8": b_token_int8}, "ratios": ratios,
        "goals": goals, "device": device, "onnxruntime": import_onnxruntime().__version__,
        "gpu": (f"measured above on {gpu_name()}" if device == "cuda" else
                "not in this run; on a CUDA host with onnxruntime-gpu this script runs every path on the GPU and writes "
                "serve_cuda.md"),
    }


def gpu_name() -> str:
    import torch

    return torch.cuda.get_device_name() if torch.cuda.is_available() else "a CUDA device"


def markdown(result: dict) -> str:
    instances = result.get("instances") or "the config's"
    lines = [
        "# Serving throughput (benchmarks/serve.py)", "",
        f"Models: `{result['models_dir']}`{' joint_classifier (one pass, both heads)' if result.get('joint') else ''} ({result['model']['layers']} layers, max_length {result['model']['max_length']}); "
        f"{result['documents']} documents / {result['tokens']} tokens, {result['docs_per_request']} documents per request, "
        f"device {result['device']} (onnxruntime {result.get('onnxruntime', 'version not recorded')}), ORT threads {result['ort_threads']}, {result['max_batch_tokens']} padded tokens per model call, "
        f"{result['request_tokens']} per FilterClient request, Triton instances per model: {instances}; {result['machine']['cpus']} CPUs "
        f"(load average {result['machine']['load_avg_start'][0]:.1f} at start, {result['machine']['load_avg_end'][0]:.1f} at end).",
        f"Triton vs in-process scores: max |diff| = {result['max_abs_diff_triton_vs_in_process']:.2e}.", "",
        "| path | concurrency | tokens/s | docs/s | p50 ms | p99 ms |", "|---|---:|---:|---:|---:|---:|",
    ]
    lines += [f"| {r['path']} | {r['concurrency']} | {r['tokens_per_s']:.0f} | {r['docs_per_s']:.1f} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} |" for r in result["rows"]]
    r, goals = result["ratios"], result["goals"]
    ratio_rows = [("b/a (Triton gRPC / in-process)", "b_over_a", ">= 0.9", "b_over_a>=0.9"),
                  ("b/d, token model only, fp32 (Triton gRPC / transformers)", "b_over_d", ">= 2", "b_over_d>=2"),
                  ("b/d, token model only, int8 served (Triton gRPC / transformers)", "b_int8_over_d", ">= 2", "b_int8_over_d>=2"),
                  ("c/b (gateway / Triton gRPC)", "c_over_b", ">= 0.8", "gateway_overhead<=20%")]
    lines += ["", "| ratio (best concurrency of each) | value | goal | met |", "|---|---:|---:|:-:|"]
    for label, key, goal, goal_key in ratio_rows:
        value, met = (f"{r[key]:.2f}", "yes" if goals[goal_key] else "no") if key in r else ("not measured", "")
        lines.append(f"| {label} | {value} | {goal} | {met} |")
    lines += ["", f"GPU: {result['gpu']}.", ""]
    if result["device"] == "cuda":
        served = max((row for row in result["rows"] if row["path"].startswith(("b:", "b-procs:"))), key=lambda row: row["tokens_per_s"])
        met = "met" if served["tokens_per_s"] >= GPU_AIM_TOKENS_PER_S else "not met"
        lines += [f"GPU aim, (b) >= {GPU_AIM_TOKENS_PER_S:,} tokens/s: {served['tokens_per_s']:,.0f} tokens/s "
                  f"({served['path']}, {served['concurrency']} requests in flight): {met}.", ""]
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
    parser.add_argument("--instances", type=int, default=None, help="Triton instances per model (default: the config's)")
    parser.add_argument("--client-processes", type=int, default=1, help="also measure (b) from this many client processes")
    parser.add_argument("--skip-baseline", action="store_true", help="leave out (d), e.g. without the pretrained encoder package")
    parser.add_argument("--joint", action="store_true", help="serve and score with the joint model (models-dir/joint_classifier; "
                        "as tokfilter model-repo places it); results to serve_joint.json/.md")
    args = parser.parse_args()
    if args.client_processes < 1:
        parser.error(f"--client-processes must be >= 1, got {args.client_processes}")
    for model in ("joint_classifier",) if args.joint else ("token_classifier", "doc_classifier"):
        if not (args.models_dir / model / "model.onnx").is_file():
            raise SystemExit(f"no exported {model} under {args.models_dir} (run `tokfilter train-classifier` or pass --models-dir)")
    args.load_start = list(os.getloadavg())
    result = run(args)
    args.out.mkdir(parents=True, exist_ok=True)
    name = ("serve" if result["device"] == "cpu" else f"serve_{result['device']}") + ("_joint" if args.joint else "")
    (args.out / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / f"{name}.md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
