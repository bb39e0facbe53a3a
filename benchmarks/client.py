"""The client pipeline without a model, in tokens/s per core: today's reference steps against the
batched ones, in the same run.

From texts to projected target-token probabilities and shards, the steps of ``ChunkFilter`` (no
cascade) in buffers of ``--buffer-docs`` documents: tokenize with the classifier tokenizer, plan
windows, batch them by the padded-token budget, score, stitch, character probabilities and spans,
tokenize with the target tokenizer, project, append to a shard (written to a temporary directory).
The model is a cheap function of the token ids (p = 0.9 for every 16th id, else 0.05; the document
score from each window's first token), so only client work is timed.

  * reference: ``tokfilter.scoring.reference_score`` (one document, one window at a time),
    ``TargetTokenizer.reference_encode`` and ``reference_project_batch``;
  * fast: ``ScoringPipeline.score``, ``TargetTokenizer.encode`` and ``project_batch`` (numpy over
    the whole buffer's flat token and character arrays);
  * fast, cold piece cache: the same with the tokenizers' piece caches (``tokfilter.piece_cache``)
    emptied before each run, as a run's first texts find them;
  * encode_batch alone: the two tokenizers' own ``encode_batch`` calls, the reference's floor.

One thread (tokenizers' parallelism, BLAS and OpenMP off): tokens/s per core. The outputs of the
two pipelines are checked identical before timing. Best of ``--repeats`` runs, interleaved.
Goal (issue 13): fast >= 2x reference. Writes benchmarks/results/client.json and client.md.

    python benchmarks/client.py [CORPUS.jsonl] [--docs 2000] [--repeats 5]
"""

from __future__ import annotations

import os

for _var in ("TOKENIZERS_PARALLELISM", "RAYON_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "false" if _var == "TOKENIZERS_PARALLELISM" else "1"

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

from interleaved import best_of_interleaved  # noqa: E402
from tokfilter import paths  # noqa: E402
from tokfilter.clients.projection import TargetTokenizer, project_batch, reference_project_batch  # noqa: E402
from tokfilter.clients.shards.writer import ShardWriter, token_dtype  # noqa: E402
from tokfilter.scoring import ScoredModel, ScoringPipeline, reference_score  # noqa: E402
from tokfilter.windows import load_tokenizer  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
GOAL = 2.0


def token_scorer(input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
    """p(forget) 0.9 for every 16th token id, else 0.05: some spans, no model."""
    return np.where(input_ids % 16 == 0, np.float32(0.9), np.float32(0.05)) * attention_mask.astype(np.float32)


def doc_scorer(input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
    """A window score from its first content token."""
    return (input_ids[:, 1] % 89).astype(np.float32) / np.float32(89)


def load_texts(corpus: Path | None, n_docs: int, work: Path) -> tuple[str, list[str]]:
    """``n_docs`` texts of ``corpus``, else of the corpus test split, else of a tiny corpus built here."""
    if corpus is None:
        corpus = paths.CORPUS_DIR / "test.jsonl"
        if not corpus.is_file():
            from tokfilter.training.corpus.build import build_corpus

            build_corpus(work / "corpus", seed=0, size="tiny")
            corpus = work / "corpus" / "test.jsonl"
    texts = []
    with open(corpus) as f:
        for line in f:
            texts.append(json.loads(line)["text"])
            if len(texts) == n_docs:
                break
    return str(corpus), texts


def classifier_setup() -> tuple[Path, int, int]:
    """The token model's tokenizer and windowing if one is exported, else its encoder's tokenizer
    with the training defaults."""
    from tokfilter.modelcard import load_model_card

    if (paths.TOKEN_MODEL_DIR / "tokenizer.json").is_file():
        card = load_model_card(paths.TOKEN_MODEL_DIR)
        return paths.TOKEN_MODEL_DIR / "tokenizer.json", card.max_length, card.stride
    from tokfilter.training.classifier.train import TrainConfig, encoder_path

    return encoder_path() / "tokenizer.json", TrainConfig.max_length, TrainConfig.stride


def run(corpus: Path | None, n_docs: int, target_path: Path | None, buffer_docs: int, repeats: int) -> dict:
    work = Path(tempfile.mkdtemp(prefix="tokfilter-client-bench-"))
    corpus_name, texts = load_texts(corpus, n_docs, work)
    if target_path is None:
        target_path = paths.TARGET_TOKENIZER
        if not target_path.is_file():
            from tokfilter.training.pretrain.tokenizer import train_target_tokenizer

            target_path = train_target_tokenizer(texts, work / "target" / "tokenizer.json")
    tokenizer_path, max_length, stride = classifier_setup()
    tokenizer = load_tokenizer(tokenizer_path)
    target = TargetTokenizer(target_path)
    pipeline = ScoringPipeline(tokenizer, ScoredModel(token_scorer, max_length, stride), 0.5,
                               ScoredModel(doc_scorer, max_length, stride))
    buffers = [texts[i : i + buffer_docs] for i in range(0, len(texts), buffer_docs)]
    manifest = {"dtype": token_dtype(target.vocab_size).name, "eot_id": target.eot_id, "threshold": 0.5, "inputs": []}

    def pipeline_run(score, encode, project) -> list[np.ndarray]:
        writer = ShardWriter(Path(tempfile.mkdtemp(dir=work)), dict(manifest), shard_tokens=1 << 22)
        projected = []
        for buffer in buffers:
            scored = score(buffer)
            encodings = encode(buffer)
            probs = project([s.char_probs for s in scored], encodings)
            for k, (s, enc, p) in enumerate(zip(scored, encodings, probs)):
                writer.add(str(k), enc.ids, p, s.doc_score)
            projected += probs
        writer.close()
        return projected

    def tokenize_only() -> None:
        for buffer in buffers:
            tokenizer.encode_batch(buffer, add_special_tokens=False)
            if target.kind == "tokenizers":
                target._hf.encode_batch(buffer, add_special_tokens=False)
            else:
                [target._tt.encode_ordinary(t) for t in buffer]

    def fast() -> list[np.ndarray]:
        return pipeline_run(pipeline.score, target.encode, project_batch)

    variants = {
        "reference": lambda: pipeline_run(lambda b: reference_score(pipeline, b), target.reference_encode, reference_project_batch),
        "fast": fast,
        "fast, cold piece cache": fast,
        "encode_batch alone": tokenize_only,
    }

    def setup(key: str) -> None:
        if key == "fast, cold piece cache":  # as the first texts of a run find it
            pipeline.encoder.clear()
            if target.kind == "tokenizers":
                target._encoder.clear()

    reference_out, fast_out = variants["reference"](), variants["fast"]()
    identical = len(reference_out) == len(fast_out) and all(np.array_equal(a, b) and a.dtype == b.dtype
                                                            for a, b in zip(reference_out, fast_out))
    scored_identical = all(
        a.doc_score == b.doc_score and a.spans == b.spans and np.array_equal(a.token_probs, b.token_probs)
        and np.array_equal(a.char_probs, b.char_probs)
        for buffer in buffers for a, b in zip(pipeline.score(buffer), reference_score(pipeline, buffer)))
    n_tokens = int(sum(len(e.ids) for e in pipeline.encode(texts)))
    n_target = int(sum(len(e.ids) for e in target.encode(texts)))
    best, _ = best_of_interleaved(variants, repeats, setup)
    rows = [{"pipeline": key, "seconds": round(seconds, 3), "tokens_per_s_per_core": round(n_tokens / seconds),
             "speedup_over_reference": round(best["reference"] / seconds, 2)} for key, seconds in best.items()]
    return {
        "benchmark": "client", "corpus": corpus_name, "documents": len(texts), "characters": sum(map(len, texts)),
        "classifier_tokens": n_tokens, "target_tokens": n_target, "classifier_tokenizer": str(tokenizer_path),
        "target_tokenizer": str(target_path), "target_kind": target.kind, "max_length": max_length, "stride": stride,
        "buffer_docs": buffer_docs, "threads": 1, "processes": 1, "repeats": repeats,
        "outputs_identical": bool(identical and scored_identical), "goal_speedup": GOAL,
        "ascii_documents": sum(target._encoder.cacheable(t) for t in texts) if target.kind == "tokenizers" else None,
        "machine": {"platform": f"{platform.machine()} {os.cpu_count()} cpus, shared", "load_avg_end": list(os.getloadavg())},
        "rows": rows,
    }


def markdown(result: dict) -> str:
    fast = next(r for r in result["rows"] if r["pipeline"] == "fast")
    cold = next(r for r in result["rows"] if r["pipeline"] == "fast, cold piece cache")
    met = "met" if fast["speedup_over_reference"] >= result["goal_speedup"] else "not met"
    lines = [
        "# Client pipeline without a model, per core (benchmarks/client.py)", "",
        f"{result['documents']} documents of {result['corpus']} ({result['classifier_tokens']:,} classifier tokens, "
        f"{result['target_tokens']:,} target tokens, {result['target_kind']} target tokenizer), buffers of "
        f"{result['buffer_docs']}, windows of {result['max_length']} (stride {result['stride']}); texts to projected "
        f"target-token probabilities and shards, a cheap function for the model. {result['threads']} thread, "
        f"{result['processes']} process; best of {result['repeats']}, interleaved; {result['machine']['platform']}. "
        f"Outputs of the two pipelines identical: {result['outputs_identical']}.", "",
        "| pipeline | seconds | classifier tokens/s per core | vs reference |", "|---|---:|---:|---:|",
    ]
    lines += [f"| {r['pipeline']} | {r['seconds']:.2f} | {r['tokens_per_s_per_core']:,} | {r['speedup_over_reference']:.2f}x |"
              for r in result["rows"]]
    lines += ["", f"Goal (issue 13): fast >= {result['goal_speedup']:.0f}x reference: **{met}** "
              f"({fast['speedup_over_reference']:.2f}x; {cold['speedup_over_reference']:.2f}x from an empty piece cache). "
              f"The piece cache takes every document for the classifier tokenizer, the {result['ascii_documents']} of "
              f"{result['documents']} in plain ASCII for the byte-level target tokenizer; the others go through `encode_batch`."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("corpus", nargs="?", type=Path, default=None,
                        help="JSONL with a text field (default: artifacts/corpus/test.jsonl, else a tiny corpus built here)")
    parser.add_argument("--docs", type=int, default=2000)
    parser.add_argument("--target-tokenizer", type=Path, default=None,
                        help="tokenizer.json or .tiktoken (default: artifacts' target tokenizer, else one trained on the texts)")
    parser.add_argument("--buffer-docs", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    result = run(args.corpus, args.docs, args.target_tokenizer, args.buffer_docs, args.repeats)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "client.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / "client.md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
