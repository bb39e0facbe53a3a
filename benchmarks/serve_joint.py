"""Through Triton, in one run: the joint model (one encoder pass, token and document scores) against
today's two-model fp32 ONNX Runtime pipeline.

Every configuration runs in its own real Triton (`running_server`, no gateway), all started at
once; the same requests go through FilterClient -> Triton gRPC to each in turn, at each
concurrency, configurations interleaved (the machine is shared: only the ratios of one run are the
result). Configurations:
  * the baseline: ``token_classifier`` + ``doc_classifier`` of ``--models-dir``, engine ONNX Runtime, fp32;
  * ``joint_classifier`` in both slots, on each ``--joint-engines`` ENGINE:PRECISION (``int8``
    serves the int8 file on ONNX Runtime; bf16/fp16 run the fp32 file at that precision).
Quality on the same server: token and document F1 of ``--quality-docs`` labelled test documents
(token labels from ``label_spans``, at the served token threshold; documents at the document
model's threshold, or the joint model's ``doc_threshold``). Each server's engine is read from its
log. Goal (issue 13): joint >= 4x the baseline's tokens/s, token and document F1 within 0.01.

    python benchmarks/serve_joint.py [--models-dir artifacts/models] [--concurrency 2,8,32]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
from pathlib import Path

from tokfilter import paths
from tokfilter.clients import FilterClient
from tokfilter.modelcard import load_model_card
from tokfilter.scoring import DEFAULT_REQUEST_TOKENS
from tokfilter.server.model_repo import place_models
from tokfilter.server.serve import running_server
from tokfilter.server.triton import free_port
from tokfilter.training.corpus.build import read_corpus

from filter import quality
from serve import benchmark_texts, measure

RESULTS_DIR = Path(__file__).resolve().parent / "results"
BASELINE = "two models, onnxruntime fp32"
GOALS = {"speedup": 4.0, "f1_within": 0.01}


def configurations(joint_engines: str) -> dict[str, dict]:
    """name -> running_server overrides and whether the joint model is placed."""
    configs = {BASELINE: {"joint": False, "engine": "onnxruntime", "precision": "fp32", "engine_precision": None}}
    for item in joint_engines.split(","):
        engine, _, precision = item.partition(":")
        file_precision = "int8" if precision == "int8" else "fp32"
        configs[f"joint, {engine} {precision}"] = {"joint": True, "engine": engine, "precision": file_precision,
                                                   "engine_precision": None if file_precision == "int8" else precision}
    return configs


def best(rows: list[dict], name: str) -> dict:
    """The row of configuration ``name`` at its best concurrency."""
    return max((r for r in rows if r["path"] == name), key=lambda r: r["tokens_per_s"])


def engines_in_log(log: Path) -> list[str]:
    """What the served models said they run (``[engine] ...`` lines), one entry per distinct line."""
    return sorted(set(re.findall(r"\[engine\] (.*)", log.read_text()))) if log.is_file() else []


def run(args: argparse.Namespace) -> dict:
    configs = configurations(args.joint_engines)
    texts = benchmark_texts(args.corpus, args.docs)
    requests = [texts[i : i + args.docs_per_request] for i in range(0, len(texts), args.docs_per_request)]
    labelled = list(read_corpus(args.corpus / "test.jsonl"))[: args.quality_docs]
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    log_dir = args.repo_dir / "logs"
    model_dirs = {False: args.models_dir / "token_classifier", True: args.models_dir / "joint_classifier"}
    doc_thresholds = {False: load_model_card(args.models_dir / "doc_classifier").threshold,
                      True: load_model_card(model_dirs[True]).doc_threshold}
    for joint in (False, True):
        place_models(args.models_dir, args.repo_dir / ("joint" if joint else "pair"), joint=joint)
    rows, results = [], {}
    with contextlib.ExitStack() as stack:
        clients = {}
        for name, config in configs.items():
            ports = {"grpc_port": free_port(), "http_port": free_port(), "metrics_port": free_port()}
            endpoints = stack.enter_context(running_server(
                args.repo_dir / ("joint" if config["joint"] else "pair"), gateway_port=None, ort_threads=args.threads,
                instances=args.instances, precision=config["precision"], engine=config["engine"],
                engine_precision=config["engine_precision"], log_dir=log_dir, **ports))
            clients[name] = stack.enter_context(FilterClient(endpoints.grpc_url, model_dirs[config["joint"]], max_in_flight=max(concurrencies),
                                                             max_batch_tokens=DEFAULT_REQUEST_TOKENS))
            results[name] = {"served_engines": engines_in_log(log_dir / f"triton-{ports['grpc_port']}.log"),
                             **quality(clients[name].filter, clients[name].threshold, labelled, doc_thresholds[config["joint"]])}
            print(f"{name}: token F1 {results[name]['token_f1']:.4f}, document F1 {results[name]['doc_f1']:.4f}; "
                  f"{'; '.join(results[name]['served_engines'])}", flush=True)
        n_tokens = sum(len(e.ids) for e in clients[BASELINE].pipeline.encode(texts))
        print(f"{len(texts)} documents, {n_tokens} tokens, {len(requests)} requests of {args.docs_per_request} documents", flush=True)
        for c in concurrencies:
            for name, client in clients.items():
                rows.append(measure(name, client.filter, requests, c, n_tokens))
    base = best(rows, BASELINE)
    for name, result in results.items():
        top = best(rows, name)
        result |= {"best_tokens_per_s": top["tokens_per_s"], "best_concurrency": top["concurrency"],
                   "speedup_vs_baseline": round(top["tokens_per_s"] / base["tokens_per_s"], 3),
                   "token_f1_minus_baseline": round(result["token_f1"] - results[BASELINE]["token_f1"], 4),
                   "doc_f1_minus_baseline": round(result["doc_f1"] - results[BASELINE]["doc_f1"], 4)}
        result["goal_met"] = (result["speedup_vs_baseline"] >= GOALS["speedup"]  # F1 within 0.01: no more than 0.01 below
                              and result["token_f1_minus_baseline"] >= -GOALS["f1_within"]
                              and result["doc_f1_minus_baseline"] >= -GOALS["f1_within"])
    return {"benchmark": "serve_joint", "models_dir": str(args.models_dir), "documents": len(texts), "tokens": n_tokens,
            "docs_per_request": args.docs_per_request, "quality_docs": len(labelled), "threads": args.threads,
            "instances": args.instances, "goals": GOALS, "rows": rows, "configurations": results,
            "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "load_avg_end": list(os.getloadavg())}}


def markdown(result: dict) -> str:
    lines = [
        "# The joint model vs the two-model pipeline through Triton (benchmarks/serve_joint.py)", "",
        f"Models: `{result['models_dir']}`. FilterClient -> Triton gRPC, one Triton per configuration, "
        f"{result['documents']} documents / {result['tokens']} tokens in requests of {result['docs_per_request']} documents, "
        f"configurations interleaved at each concurrency; engine threads {result['threads']}, instances per model: "
        f"{result['instances'] or 'the config’s'}; {result['machine']['cpus']} CPUs, shared (load average {result['machine']['load_avg_end'][0]:.1f} "
        f"at the end). F1 on {result['quality_docs']} "
        "labelled test documents scored by the same server. Only this run's ratios are the result.", "",
        "| configuration | served engines (server log) | best tokens/s (concurrency) | vs two models fp32 (goal >= 4x) | token F1 (diff) | document F1 (diff) | goal met |",
        "|---|---|---:|---:|---:|---:|:-:|",
    ]
    for name, r in result["configurations"].items():
        lines.append(f"| {name} | {'<br>'.join(r['served_engines'])} | {r['best_tokens_per_s']:,.0f} ({r['best_concurrency']}) | "
                     f"{r['speedup_vs_baseline']:.2f}x | {r['token_f1']:.4f} ({r['token_f1_minus_baseline']:+.4f}) | "
                     f"{r['doc_f1']:.4f} ({r['doc_f1_minus_baseline']:+.4f}) | {'' if name == BASELINE else 'yes' if r['goal_met'] else 'no'} |")
    lines += ["", "| configuration | concurrency | tokens/s | docs/s | p50 ms | p99 ms |", "|---|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['path']} | {r['concurrency']} | {r['tokens_per_s']:,.0f} | {r['docs_per_s']:.1f} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} |"
              for r in result["rows"]]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models-dir", type=Path, default=paths.MODELS_DIR,
                        help="holds token_classifier/, doc_classifier/ (the baseline) and joint_classifier/")
    parser.add_argument("--corpus", type=Path, default=paths.CORPUS_DIR)
    parser.add_argument("--docs", type=int, default=96)
    parser.add_argument("--docs-per-request", type=int, default=2)
    parser.add_argument("--quality-docs", type=int, default=300, help="labelled test documents scored for F1")
    parser.add_argument("--concurrency", default="2,8,32")
    parser.add_argument("--joint-engines", default="onnxruntime:fp32,onnxruntime:int8,openvino:bf16",
                        help="comma-separated ENGINE:PRECISION the joint model is served on (tokfilter.engines)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="engine threads per model instance")
    parser.add_argument("--instances", type=int, default=None, help="Triton instances per model (default: the config's)")
    parser.add_argument("--repo-dir", type=Path, default=paths.ARTIFACTS / "bench_joint_repos", help="model repositories the benchmark fills")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR)
    args = parser.parse_args()
    for model in ("token_classifier", "doc_classifier", "joint_classifier"):
        if not (args.models_dir / model / "model.onnx").is_file():
            raise SystemExit(f"no exported {model} under {args.models_dir} (run `tokfilter train-classifier` or pass --models-dir)")
    result = run(args)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "serve_joint.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "serve_joint.md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
