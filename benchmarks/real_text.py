"""Real text: the classifiers on real prose that no project file contains, and medicine inside benign documents.

Data: the realtext passages of the shared evaluation data (``--data``; PubMed abstracts and NIH patient
information, an open biology textbook, Wikipedia; see its README). The default build never needs them;
without the folder this script says so and exits 0.

Passages are split by a seeded hash of their id into ``adapt`` (50%: the only passages any model may
train on, as an unlabelled corpus: ``--write-unlabelled``), ``dev`` (15%: every decision about data
mixes and settings is made on it) and ``test`` (35%: what is reported). For each model (``--model``, a
token model dir; its document model is the ``doc_classifier`` dir beside it unless ``--doc-model`` says;
a joint model scores documents itself):

* passages: share of word pieces flagged at the card threshold per domain (med, bio, bio_gray,
  general); passage AUROC of the mean token probability (med against bio + general, and against
  bio_gray);
* mixed documents: each bio or general passage of the split with one or two medical sentences (8-60
  words, from the split's med passages) inserted between its sentences, seeded. Token precision,
  recall, F1 and AUROC (an inserted sentence's word pieces are positive, the host's negative);
  context ratio = flagged share of the inserted sentences in their host / of the same sentences
  scored alone;
* the document score on the mixed documents: recall at the document card's threshold and at its
  95%-recall threshold (the cut ``tokfilter filter --doc-prefilter`` is given in benchmarks/filter.py),
  i.e. how many documents a prefilter would wrongly let skip the token model.

    python benchmarks/real_text.py --data ../shared/data/realtext --model default=artifacts/models/joint_classifier

The adapted model (the adapt split as a user's own unlabelled corpus, labelled by the default joint
model as teacher and interleaved, mixed into the default corpus; settings chosen on the dev split):

    python benchmarks/real_text.py --data ../shared/data/realtext --split adapt --write-unlabelled artifacts/realtext_adapt.jsonl
    tokfilter label artifacts/realtext_adapt.jsonl --out artifacts/realtext_adapt_i3 \\
        --teacher artifacts/models/joint_classifier --whole-sentences --interleave 3
    tokfilter train-classifier --task token --corpus artifacts/corpus --corpus artifacts/realtext_adapt_i3:32 \\
        --lr 2e-4 --max-steps 500 --out artifacts/models_adapted/token_classifier
    python benchmarks/real_text.py --data ../shared/data/realtext --model default=artifacts/models/joint_classifier \\
        --model adapted=artifacts/models_adapted/token_classifier --doc-model adapted=artifacts/models/joint_classifier

Writes benchmarks/results/real_text.{json,md,png} and real_text_misses.md (the inserted sentences
each model flags least, to read what it misses).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import random
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tokfilter import paths
from tokfilter.modelcard import load_model_card
from tokfilter.scoring import DocumentScores, ScoringPipeline
from tokfilter.sentences import sentence_spans
from tokfilter.training.classifier.train import binary_metrics, token_labels_from_spans

RESULTS_DIR = Path(__file__).resolve().parent / "results"
DOMAINS = ("med", "bio", "bio_gray", "general")
SPLITS = {"adapt": 0.5, "dev": 0.15, "test": 0.35}
HOST_DOMAINS = ("bio", "general")
# A passage sharing this many words in a row with a training corpus is left out: 13, as in GPT-3's
# decontamination; 10 also caught research boilerplate ("the aim of this study was to evaluate the
# effect of") in a quarter of the flagged passages.
SEEN_NGRAM_WORDS = 13
INSERTED_WORDS = (8, 60)  # a sentence, not a heading or a fragment ("Inception cohort study.")
MISSES_SHOWN = 15  # inserted sentences a model flags least, written to <stem>_misses.md to be read
# Each inserted sentence read alone and labelled against a written guideline (data/realtext_sentence_labels.md):
# a sentence cut from a medical passage need not be medicine.
SENTENCE_LABELS = Path(__file__).resolve().parent / "data" / "realtext_sentence_labels.jsonl"
SENTENCE_LABEL_VALUES = ("medicine", "borderline", "not_medicine")
GOALS = {"mixed_token_f1": 0.85, "mixed_token_auroc": 0.95, "context_ratio": 0.8,
         "flagged_bio_max": 0.05, "flagged_general_max": 0.02, "flagged_med_min": 0.60}


@dataclass(frozen=True)
class Passage:
    id: str
    domain: str
    text: str


@dataclass(frozen=True)
class MixedDocument:
    text: str
    host_domain: str
    inserted: tuple[tuple[int, int], ...]  # character spans of the inserted medical sentences
    host_id: str = ""
    inserted_from: tuple[str, ...] = ()  # the med passages the inserted sentences come from


def passage_split(passage_id: str, seed: int = 0) -> str:
    """adapt | dev | test, by a seeded hash of the passage id (stable across runs and machines)."""
    u = int.from_bytes(hashlib.sha256(f"realtext:{seed}:{passage_id}".encode()).digest()[:8], "big") / 2**64
    bound = 0.0
    for split, fraction in SPLITS.items():
        bound += fraction
        if u < bound:
            return split
    return split


def load_passages(data_dir: Path, split: str, seed: int = 0, max_per_domain: int | None = None) -> list[Passage]:
    """Passages of one split from ``{data_dir}/{domain}.jsonl``; with ``max_per_domain``, a seeded
    sample of at most that many per domain (a bounded run on a loaded machine)."""
    passages = []
    for domain in DOMAINS:
        with open(data_dir / f"{domain}.jsonl", encoding="utf-8") as fh:
            rows = [Passage(r["id"], domain, r["text"]) for r in map(json.loads, fh) if passage_split(r["id"], seed) == split]
        if max_per_domain is not None and len(rows) > max_per_domain:
            rows = random.Random(f"{seed}:{domain}").sample(rows, max_per_domain)
        passages += rows
    return passages


def word_ngrams(text: str, n: int = SEEN_NGRAM_WORDS) -> set[str]:
    """The ``n``-word sequences of a text (lower-cased words: a sentence re-split or re-joined keeps them)."""
    words = re.findall(r"\w+", text.lower())
    return {" ".join(words[i : i + n]) for i in range(len(words) - n + 1)}


def drop_seen_passages(passages: list[Passage], corpora: list[Path]) -> tuple[list[Passage], dict[str, list[str]]]:
    """The passages that share no SEEN_NGRAM_WORDS-word sequence with a train or validation document
    of ``corpora`` (what the models trained and calibrated on), and the ids left out per domain. A
    corpus built from public text (Wikipedia leads) can hold a passage's sentences: scoring those
    would measure memory, not generalization. Streams the corpora against the passages' n-grams."""
    owners: dict[str, set[int]] = {}
    for index, passage in enumerate(passages):
        for gram in word_ngrams(passage.text):
            owners.setdefault(gram, set()).add(index)
    seen: set[int] = set()
    for corpus in corpora:
        for split in ("train", "validation"):
            with open(corpus / f"{split}.jsonl", encoding="utf-8") as fh:
                for line in fh:
                    for gram in word_ngrams(json.loads(line)["text"]):
                        seen.update(owners.get(gram, ()))
    dropped: dict[str, list[str]] = {}
    for index in sorted(seen):
        dropped.setdefault(passages[index].domain, []).append(passages[index].id)
    return [p for i, p in enumerate(passages) if i not in seen], dropped


def medical_sentences(passages: list[Passage]) -> list[tuple[str, str]]:
    """(passage id, sentence) of the med passages' sentences with INSERTED_WORDS words."""
    out = []
    for p in passages:
        if p.domain == "med":
            out += [(p.id, p.text[s:e]) for s, e in sentence_spans(p.text)
                    if INSERTED_WORDS[0] <= len(p.text[s:e].split()) <= INSERTED_WORDS[1]]
    return out


def build_mixed_documents(passages: list[Passage], seed: int = 0) -> list[MixedDocument]:
    """Every host passage (bio, general) with 1 or 2 medical sentences inserted between its sentences
    (at either end when it has one sentence); each medical sentence is used at most once while any is left."""
    rng = random.Random(seed)
    pool: list[tuple[str, str]] = []
    documents = []
    for host in (p for p in passages if p.domain in HOST_DOMAINS):
        sentences = [host.text[s:e] for s, e in sentence_spans(host.text)]
        slots = range(1, len(sentences)) if len(sentences) > 1 else range(0, 2)
        inserts: dict[int, list[str]] = {}
        sources = []
        for _ in range(rng.randint(1, 2)):
            if not pool:
                pool = medical_sentences(passages)
                rng.shuffle(pool)
            source, sentence = pool.pop()
            inserts.setdefault(rng.choice(slots), []).append(sentence)
            sources.append(source)
        pieces = [(s, True) for s in inserts.get(0, [])]
        for index, sentence in enumerate(sentences, 1):
            pieces += [(sentence, False)] + [(s, True) for s in inserts.get(index, [])]
        parts, spans, position = [], [], 0
        for sentence, is_inserted in pieces:
            if parts:
                parts.append(" ")
                position += 1
            if is_inserted:
                spans.append((position, position + len(sentence)))
            parts.append(sentence)
            position += len(sentence)
        documents.append(MixedDocument("".join(parts), host.domain, tuple(spans), host.id, tuple(sources)))
    return documents


def unseen_mixed_documents(passages: list[Passage], corpora: list[Path], seed: int = 0) -> tuple[list[Passage], list[MixedDocument], dict[str, list[str]]]:
    """The passages no training corpus holds (drop_seen_passages), the mixed documents built from the
    whole split less those with a seen host or a seen inserted sentence (so the rest are the very
    documents the sentence labels were written for), and the ids left out per domain."""
    kept, dropped = drop_seen_passages(passages, corpora)
    seen = {i for ids in dropped.values() for i in ids}
    mixed = [m for m in build_mixed_documents(passages, seed) if m.host_id not in seen and not seen & set(m.inserted_from)]
    return kept, mixed, dropped


def sentence_id(text: str) -> str:
    """The key of a sentence in the label file: it holds no text of the shared data."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def load_sentence_labels(path: Path = SENTENCE_LABELS) -> dict[str, str]:
    """sentence id -> label; {} when the file is absent (another seed or data: those metrics say n/a)."""
    if not path.is_file():
        return {}
    labels = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        row = json.loads(line)
        if row.get("label") not in SENTENCE_LABEL_VALUES:
            raise ValueError(f"{path}:{number}: label must be one of {SENTENCE_LABEL_VALUES}, got {row.get('label')!r}")
        labels[row["id"]] = row["label"]
    return labels


def score_with_progress(pipeline: ScoringPipeline, texts: list[str], what: str, chunk: int = 64) -> list[DocumentScores]:
    """``pipeline.score`` in chunks, printing tokens/s and ETA (a model takes minutes on 2 cores)."""
    results: list[DocumentScores] = []
    start = last = time.perf_counter()
    tokens = 0
    for lo in range(0, len(texts), chunk):
        results += pipeline.score(texts[lo : lo + chunk])
        tokens += sum(len(r.token_ids) for r in results[-chunk:])
        now = time.perf_counter()
        if now - last > 10 or lo + chunk >= len(texts):
            last = now
            rate = tokens / (now - start)
            eta = (len(texts) - len(results)) * (now - start) / len(results)
            print(f"  {what}: {len(results)}/{len(texts)} texts, {rate:,.0f} tokens/s, ETA {eta:.0f}s", flush=True)
    return results


def auroc(labels: np.ndarray, scores: np.ndarray) -> float | None:
    from sklearn.metrics import roc_auc_score

    labels = np.asarray(labels).astype(bool)
    return float(roc_auc_score(labels, scores)) if 0 < labels.sum() < len(labels) else None


def passage_metrics(pipeline: ScoringPipeline, passages: list[Passage]) -> tuple[dict, list[DocumentScores]]:
    """Flagged share per domain and passage AUROC (mean token probability) of the token model."""
    scored = score_with_progress(pipeline, [p.text for p in passages], "passages")
    domain = np.array([p.domain for p in passages])
    probs = {d: np.concatenate([r.token_probs for r, p in zip(scored, passages) if p.domain == d]) for d in DOMAINS}
    mean_prob = np.array([float(np.mean(r.token_probs)) if len(r.token_probs) else 0.0 for r in scored])
    vs_benign, vs_gray = np.isin(domain, ("med", "bio", "general")), np.isin(domain, ("med", "bio_gray"))
    return {
        "passages": {d: int(np.sum(domain == d)) for d in DOMAINS},
        "flagged_share": {d: float(np.mean(probs[d] >= pipeline.threshold)) for d in DOMAINS},
        "passage_auroc": auroc(domain[vs_benign] == "med", mean_prob[vs_benign]),
        "passage_auroc_vs_bio_gray": auroc(domain[vs_gray] == "med", mean_prob[vs_gray]),
    }, scored


def mixed_metrics(pipeline: ScoringPipeline, mixed: list[MixedDocument],
                  sentence_labels: dict[str, str]) -> tuple[dict, list[DocumentScores]]:
    """Token precision, recall, F1, AUROC on the mixed documents and the context ratio, with the passage
    labels (every inserted sentence positive) and, where every inserted sentence has one, the sentence labels."""
    threshold = pipeline.threshold
    scored = score_with_progress(pipeline, [m.text for m in mixed], "mixed documents")
    labels = [token_labels_from_spans(r.offsets, m.inserted) for r, m in zip(scored, mixed)]
    all_labels, all_probs = np.concatenate(labels), np.concatenate([r.token_probs for r in scored])
    overall = binary_metrics(all_labels, all_probs, threshold)
    by_host = f1_by_host(mixed, labels, [r.token_probs for r in scored], threshold)
    alone = score_with_progress(pipeline, [m.text[s:e] for m in mixed for s, e in m.inserted], "inserted sentences alone")
    in_context = all_probs[all_labels == 1] >= threshold
    alone_flagged = np.concatenate([r.token_probs for r in alone]) >= threshold
    sentences = [(m.text[s:e], r, (s, e)) for m, r in zip(mixed, scored) for s, e in m.inserted]
    per_sentence = [
        {"sentence": text, "label": sentence_labels.get(sentence_id(text)), "alone": float(np.mean(a.token_probs >= threshold)),
         "in_context": float(np.mean(r.token_probs[token_labels_from_spans(r.offsets, [span]) == 1] >= threshold))}
        for (text, r, span), a in zip(sentences, alone)
    ]
    return {
        "mixed_docs": len(mixed), "mixed_tokens": int(len(all_labels)), "mixed_positive_share": float(all_labels.mean()),
        "mixed_token_precision": overall["precision"], "mixed_token_recall": overall["recall"],
        "mixed_token_f1": overall["f1"], "mixed_token_auroc": auroc(all_labels, all_probs), "mixed_token_f1_by_host": by_host,
        "mixed_docs_with_an_inserted_token_flagged": float(np.mean([np.any(r.token_probs[lab == 1] >= threshold)
                                                                    for r, lab in zip(scored, labels)])),
        "inserted_flagged_in_context": float(in_context.mean()), "inserted_flagged_alone": float(alone_flagged.mean()),
        "context_ratio": float(in_context.mean() / max(alone_flagged.mean(), 1e-12)),
        "inserted_sentences_missed_alone": float(np.mean([x["alone"] < 0.5 for x in per_sentence])),
        "sentence_labelled": sentence_labelled_metrics(mixed, scored, alone, sentence_labels, threshold),
        "misses": sorted(per_sentence, key=lambda x: (x["in_context"], x["alone"]))[:MISSES_SHOWN],
    }, scored


def f1_by_host(mixed: list[MixedDocument], labels: list[np.ndarray], probs: list[np.ndarray], threshold: float) -> dict:
    """Token F1 over the mixed documents of each host domain (None for a domain with none)."""
    by_host = {}
    for host in HOST_DOMAINS:
        keep = [i for i, m in enumerate(mixed) if m.host_domain == host]
        by_host[host] = binary_metrics(np.concatenate([labels[i] for i in keep]), np.concatenate([probs[i] for i in keep]),
                                       threshold)["f1"] if keep else None
    return by_host


def sentence_labelled_metrics(mixed: list[MixedDocument], scored: list[DocumentScores], alone: list[DocumentScores],
                              sentence_labels: dict[str, str], threshold: float) -> dict:
    """The mixed-document metrics with the sentence labels: positives are the inserted sentences labelled
    medicine; the tokens of the other inserted sentences are left out (neither host text nor medicine).
    ``alone`` holds the inserted sentences scored alone, in document order."""
    kinds = [sentence_labels.get(sentence_id(m.text[s:e])) for m in mixed for s, e in m.inserted]
    if not kinds or None in kinds:
        return {"available": False, "unlabelled_sentences": sum(k is None for k in kinds), "inserted_total": len(kinds)}
    ys, ps, drops, first = [], [], [], 0
    for m, r in zip(mixed, scored):
        spans = {label: [span for span, kind in zip(m.inserted, kinds[first:]) if kind == label] for label in SENTENCE_LABEL_VALUES}
        first += len(m.inserted)
        ys.append(token_labels_from_spans(r.offsets, spans["medicine"]))
        drops.append(token_labels_from_spans(r.offsets, spans["borderline"] + spans["not_medicine"]) == 1)
        ps.append(r.token_probs)
    ys_kept, ps_kept = [a[~d] for a, d in zip(ys, drops)], [a[~d] for a, d in zip(ps, drops)]
    y, p = np.concatenate(ys_kept), np.concatenate(ps_kept)
    overall = binary_metrics(y, p, threshold)
    by_host = f1_by_host(mixed, ys_kept, ps_kept, threshold)
    medicine = [i for i, kind in enumerate(kinds) if kind == "medicine"]
    in_context = p[y == 1] >= threshold
    alone_flagged = np.concatenate([alone[i].token_probs for i in medicine]) >= threshold
    other = np.concatenate([pp[d] for pp, d in zip(ps, drops)])
    return {
        "available": True, "inserted_sentences": {label: kinds.count(label) for label in SENTENCE_LABEL_VALUES},
        "token_precision": overall["precision"], "token_recall": overall["recall"], "token_f1": overall["f1"],
        "token_auroc": auroc(y, p), "token_f1_by_host": by_host,
        "flagged_in_context": float(in_context.mean()), "flagged_alone": float(alone_flagged.mean()),
        "context_ratio": float(in_context.mean() / max(alone_flagged.mean(), 1e-12)),
        "missed_alone": float(np.mean([np.mean(alone[i].token_probs >= threshold) < 0.5 for i in medicine])),
        "other_inserted_flagged_in_context": float(np.mean(other >= threshold)) if len(other) else None,
    }


def document_metrics(doc_dir: Path, passages: list[Passage], passage_scores: list[DocumentScores],
                     mixed_scores: list[DocumentScores]) -> dict:
    """Document-score recall on the mixed documents and positive share per passage domain, at the
    document card's threshold and at its 95%-recall threshold (the cascade's cut); ``doc_dir`` is a
    document model, or a joint model whose document head scored."""
    card = load_model_card(doc_dir)
    threshold, recall95 = (card.doc_threshold, card.doc_threshold_recall95) if card.joint else (card.threshold, card.threshold_recall95)
    domain = np.array([p.domain for p in passages])
    on_mixed = np.array([r.doc_score for r in mixed_scores])
    on_passages = np.array([r.doc_score for r in passage_scores])
    benign_or_med = domain != "bio_gray"
    row = {"doc_threshold": threshold, "doc_threshold_recall95": recall95,
           "doc_passage_auroc": auroc(domain[benign_or_med] == "med", on_passages[benign_or_med])}
    for name, cut in (("card", threshold), ("recall95", recall95)):
        row[f"doc_recall_mixed_at_{name}"] = float(np.mean(on_mixed >= cut))
        row[f"doc_positive_share_at_{name}"] = {d: float(np.mean(on_passages[domain == d] >= cut)) for d in DOMAINS}
    return row


def evaluate_model(token_dir: Path, doc_dir: Path | None, passages: list[Passage], mixed: list[MixedDocument],
                   sentence_labels: dict[str, str]) -> dict:
    """Every metric of the module docstring for one token model (and its document model)."""
    started = time.perf_counter()
    pipeline = ScoringPipeline.from_model_dirs(token_dir, doc_dir)
    on_passages, passage_scores = passage_metrics(pipeline, passages)
    on_mixed, mixed_scores = mixed_metrics(pipeline, mixed, sentence_labels)
    row = {"token_model": str(token_dir), "doc_model": str(doc_dir) if doc_dir else None, "threshold": pipeline.threshold,
           "data_digest": load_model_card(token_dir).data_digest, **on_passages, **on_mixed}
    if pipeline.scores_documents:
        row.update(document_metrics(doc_dir or token_dir, passages, passage_scores, mixed_scores))
    row["seconds"] = round(time.perf_counter() - started, 1)
    return row


def goals_met(row: dict) -> dict[str, bool | None]:
    """The issue's goals; those on the sentence labels are None where the labels do not cover the documents."""
    f, labelled = row["flagged_share"], row["sentence_labelled"]
    on_labels = (lambda key, goal: labelled[key] is not None and labelled[key] >= goal) if labelled["available"] else (lambda key, goal: None)
    return {
        "mixed token F1 >= 0.85": row["mixed_token_f1"] >= GOALS["mixed_token_f1"],
        "mixed token AUROC >= 0.95": (row["mixed_token_auroc"] or 0) >= GOALS["mixed_token_auroc"],
        "context ratio >= 0.8": row["context_ratio"] >= GOALS["context_ratio"],
        "sentence labels: mixed token F1 >= 0.85": on_labels("token_f1", GOALS["mixed_token_f1"]),
        "sentence labels: mixed token AUROC >= 0.95": on_labels("token_auroc", GOALS["mixed_token_auroc"]),
        "sentence labels: context ratio >= 0.8": on_labels("context_ratio", GOALS["context_ratio"]),
        "bio flagged <= 5%": f["bio"] <= GOALS["flagged_bio_max"],
        "general flagged <= 2%": f["general"] <= GOALS["flagged_general_max"],
        "med flagged >= 60%": f["med"] >= GOALS["flagged_med_min"],
    }


def seen_note(result: dict) -> str:
    """Which passages were left out because a training corpus holds their words."""
    seen = result.get("seen_passages_left_out") or {}
    if not result.get("seen_corpora"):
        return ""
    left = ", ".join(f"{d} {len(ids)}" for d, ids in seen.items()) or "none"
    return (f" (checked: passages sharing a {SEEN_NGRAM_WORDS}-word sequence with the training corpora "
            f"{', '.join(f'`{c}`' for c in result['seen_corpora'])} are left out: {left})")


def markdown(result: dict) -> str:
    rows = result["rows"]
    names = list(rows)
    head = "| metric | " + " | ".join(f"`{n}`" for n in names) + " |"
    sep = "|---|" + "---:|" * len(names)

    def line(label: str, get, fmt: str = "{:.3f}") -> str:
        values = []
        for n in names:
            try:
                v = get(rows[n])
            except KeyError:
                v = None
            values.append("n/a" if v is None else fmt.format(v))
        return f"| {label} | " + " | ".join(values) + " |"

    pct = "{:.1%}"
    lines = [
        "# Real text (benchmarks/real_text.py)", "",
        f"Passages of `{result['data']}`, split by a seeded hash of their id (seed {result['seed']}): "
        f"{', '.join(f'{s} {int(f * 100)}%' for s, f in SPLITS.items())}. Reported here: the **{result['split']}** split "
        f"({', '.join(f'{d} {n}' for d, n in result['passages'].items())} passages"
        f"{'' if not result.get('max_per_domain') else ', a seeded sample of at most ' + str(result['max_per_domain']) + ' per domain'}). No model scored here trained on any "
        "of its passages" + seen_note(result) + ". Decisions about data mixes and labelling settings may use the dev split only; the adapt split is "
        "the only real text a model may train on (unlabelled, through `tokfilter label`).", "",
        f"Mixed documents: {result['mixed_docs']} bio and general passages, each with 1-2 medical sentences "
        f"({INSERTED_WORDS[0]}-{INSERTED_WORDS[1]} words, from the split's med passages) inserted between its sentences. "
        "Token metrics at each token model's card threshold; an inserted sentence's word pieces are the positives. "
        "Document recall: share of mixed documents whose document score reaches the document card's threshold, and its "
        "95%-recall threshold (the cascade's cut `--doc-prefilter`): the rest would skip the token model.", "",
        "Sentence labels (`benchmarks/data/realtext_sentence_labels.md`): each inserted "
        "sentence read alone and labelled medicine, borderline or not medicine against a written guideline, blind to any "
        "model's scores. With them only the medicine sentences are positives and the other inserted sentences are left out "
        "of the token metrics (n/a: some inserted sentence has no label, e.g. another seed).", "",
        *([result["note"], ""] if result.get("note") else []),
        head, sep,
        line("token threshold (card)", lambda r: r["threshold"]),
        line("flagged word pieces, med passages", lambda r: r["flagged_share"]["med"], pct),
        line("flagged, bio passages", lambda r: r["flagged_share"]["bio"], pct),
        line("flagged, bio_gray passages", lambda r: r["flagged_share"]["bio_gray"], pct),
        line("flagged, general passages", lambda r: r["flagged_share"]["general"], pct),
        line("passage AUROC, med vs bio + general", lambda r: r["passage_auroc"]),
        line("passage AUROC, med vs bio_gray", lambda r: r["passage_auroc_vs_bio_gray"]),
        line("mixed docs: token precision", lambda r: r["mixed_token_precision"]),
        line("mixed docs: token recall", lambda r: r["mixed_token_recall"]),
        line("mixed docs: **token F1**", lambda r: r["mixed_token_f1"]),
        line("mixed docs: token F1, bio hosts", lambda r: r["mixed_token_f1_by_host"]["bio"]),
        line("mixed docs: token F1, general hosts", lambda r: r["mixed_token_f1_by_host"]["general"]),
        line("mixed docs: token AUROC", lambda r: r["mixed_token_auroc"]),
        line("mixed docs with any inserted word piece flagged", lambda r: r["mixed_docs_with_an_inserted_token_flagged"], pct),
        line("inserted sentences flagged, in context", lambda r: r["inserted_flagged_in_context"], pct),
        line("inserted sentences flagged, alone", lambda r: r["inserted_flagged_alone"], pct),
        line("**context ratio**", lambda r: r["context_ratio"]),
        line("inserted sentences under half flagged, alone", lambda r: r["inserted_sentences_missed_alone"], pct),
        line("sentence labels: inserted sentences medicine / borderline / not",
             lambda r: " / ".join(str(r["sentence_labelled"]["inserted_sentences"][k]) for k in SENTENCE_LABEL_VALUES), "{}"),
        line("sentence labels: token precision", lambda r: r["sentence_labelled"]["token_precision"]),
        line("sentence labels: token recall", lambda r: r["sentence_labelled"]["token_recall"]),
        line("sentence labels: **token F1**", lambda r: r["sentence_labelled"]["token_f1"]),
        line("sentence labels: token F1, bio hosts", lambda r: r["sentence_labelled"]["token_f1_by_host"]["bio"]),
        line("sentence labels: token F1, general hosts", lambda r: r["sentence_labelled"]["token_f1_by_host"]["general"]),
        line("sentence labels: token AUROC", lambda r: r["sentence_labelled"]["token_auroc"]),
        line("sentence labels: medicine sentences flagged, in context", lambda r: r["sentence_labelled"]["flagged_in_context"], pct),
        line("sentence labels: medicine sentences flagged, alone", lambda r: r["sentence_labelled"]["flagged_alone"], pct),
        line("sentence labels: **context ratio**", lambda r: r["sentence_labelled"]["context_ratio"]),
        line("sentence labels: medicine sentences under half flagged, alone", lambda r: r["sentence_labelled"]["missed_alone"], pct),
        line("sentence labels: other inserted sentences flagged, in context", lambda r: r["sentence_labelled"]["other_inserted_flagged_in_context"], pct),
        line("document score: recall on mixed docs, card threshold", lambda r: r["doc_recall_mixed_at_card"], pct),
        line("document score: recall on mixed docs, 95%-recall cut", lambda r: r["doc_recall_mixed_at_recall95"], pct),
        line("document score: med passages positive, card threshold", lambda r: r["doc_positive_share_at_card"]["med"], pct),
        line("document score: bio passages positive, card threshold", lambda r: r["doc_positive_share_at_card"]["bio"], pct),
        line("document score: general passages positive, card threshold", lambda r: r["doc_positive_share_at_card"]["general"], pct),
        line("document passage AUROC, med vs bio + general", lambda r: r["doc_passage_auroc"]),
        "", "| goal (issue 12) | " + " | ".join(f"`{n}`" for n in names) + " |", "|---|" + ":-:|" * len(names),
    ]
    met, marks = {n: goals_met(rows[n]) for n in names}, {True: "yes", False: "no", None: "n/a"}
    for goal in met[names[0]]:
        lines.append(f"| {goal} | " + " | ".join(marks[met[n][goal]] for n in names) + " |")
    lines += ["", "Models: " + "; ".join(f"`{n}`: `{r['token_model']}` + `{r['doc_model']}`" for n, r in rows.items()),
              "", f"{result['machine']}; load average at the end {result['load_avg_end']}.", "",
              "![real text](real_text.png)", ""]
    return "\n".join(lines)


def misses_markdown(result: dict) -> str:
    """The inserted sentences each model flags least in context: what "medicine" the model misses,
    and whether a reader would call it medicine at all (a sentence cut from a PubMed abstract need not be)."""
    lines = [f"# Inserted medical sentences flagged least ({result['split']} split)", "",
             "Share of each sentence's word pieces flagged at the card threshold, inside its host paragraph and "
             "scored alone; the sentences come from the split's med passages; label: the sentence label (read alone).", ""]
    for name, row in result["rows"].items():
        lines += [f"## `{name}`", "", "| in context | alone | label | sentence |", "|---:|---:|---|---|"]
        lines += [f"| {x['in_context']:.0%} | {x['alone']:.0%} | {x.get('label') or 'n/a'} | {x['sentence'][:240].replace('|', '/')} |"
                  for x in row["misses"]]
        lines.append("")
    return "\n".join(lines)


def plot(result: dict, path: Path) -> None:
    """Bars per model: flagged share per domain, mixed-document F1 and the context ratio."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = [("med flagged", lambda r: r["flagged_share"]["med"]), ("bio flagged", lambda r: r["flagged_share"]["bio"]),
               ("bio_gray flagged", lambda r: r["flagged_share"]["bio_gray"]),
               ("general flagged", lambda r: r["flagged_share"]["general"]), ("mixed F1", lambda r: r["mixed_token_f1"]),
               ("mixed AUROC", lambda r: r["mixed_token_auroc"] or 0.0), ("context ratio", lambda r: r["context_ratio"]),
               ("mixed F1,\nsentence labels", lambda r: r["sentence_labelled"].get("token_f1") or 0.0)]
    names = list(result["rows"])
    width = 0.8 / len(names)
    fig, ax = plt.subplots(figsize=(9, 4))
    for k, name in enumerate(names):
        values = [get(result["rows"][name]) for _, get in metrics]
        ax.bar(np.arange(len(metrics)) + k * width, values, width, label=name)
    ax.set_xticks(np.arange(len(metrics)) + width * (len(names) - 1) / 2, [m for m, _ in metrics], rotation=20)
    ax.set_ylim(0, 1.05)
    ax.set_title(f"real text, {result['split']} split")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def model_rows(models: list[str], doc_models: list[str]) -> dict[str, tuple[Path, Path | None]]:
    """name -> (token dir, document dir) from ``[NAME=]DIR`` arguments; a token model's document model is
    the ``doc_classifier`` dir beside it unless ``--doc-model NAME=DIR`` names one; a joint model has none."""
    def parse(arg: str) -> tuple[str, Path]:
        name, _, path = arg.rpartition("=")
        return name or Path(path).resolve().parent.name, Path(path)

    docs = dict(parse(a) for a in doc_models)
    rows = {}
    for arg in models:
        name, token_dir = parse(arg)
        sibling = token_dir.parent / "doc_classifier"
        if load_model_card(token_dir).joint:
            rows[name] = (token_dir, None)
        else:
            rows[name] = (token_dir, docs.get(name, sibling if (sibling / "tokfilter.json").is_file() else None))
    return rows


def write_unlabelled(data_dir: Path, split: str, seed: int, out: Path) -> int:
    """The texts of one split as an unlabelled JSONL corpus (id and text only: no domain) for `tokfilter label`."""
    passages = load_passages(data_dir, split, seed)
    rng = random.Random(seed)
    rng.shuffle(passages)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", encoding="utf-8") as fh:
        for index, p in enumerate(passages):
            fh.write(json.dumps({"id": f"realtext-{split}-{index:05d}", "text": p.text}, ensure_ascii=False) + "\n")
    return len(passages)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=paths.REPO_ROOT.parent / "shared" / "data" / "realtext",
                        help="the realtext folder (med.jsonl, bio.jsonl, bio_gray.jsonl, general.jsonl)")
    parser.add_argument("--model", action="append", metavar="[NAME=]DIR",
                        help=f"token or joint model dir, repeatable (default {paths.JOINT_MODEL_DIR}, the model make demo trains)")
    parser.add_argument("--doc-model", action="append", default=[], metavar="[NAME=]DIR",
                        help="document model of the row NAME (default: doc_classifier beside its token model)")
    parser.add_argument("--split", choices=sorted(SPLITS), default="test", help="passages scored (dev: for decisions)")
    parser.add_argument("--seed", type=int, default=0, help="split and mixing seed")
    parser.add_argument("--max-per-domain", type=int, metavar="N", help="score a seeded sample of N passages per domain")
    parser.add_argument("--write-unlabelled", type=Path, metavar="OUT.jsonl",
                        help="write the --split passages as an unlabelled corpus (for `tokfilter label`) and stop")
    parser.add_argument("--sentence-labels", type=Path, default=SENTENCE_LABELS,
                        help="labels of the inserted sentences, read alone (JSONL of id, label; see benchmarks/data/)")
    parser.add_argument("--seen-corpus", action="append", type=Path, metavar="DIR",
                        help="corpus the models trained on (train/validation jsonl), repeatable: passages sharing a "
                             f"{SEEN_NGRAM_WORDS}-word sequence with it are not scored (default {paths.CORPUS_DIR} when it exists)")
    parser.add_argument("--note", default="", help="a line for the markdown (how the models were trained, ...)")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR)
    args = parser.parse_args()
    if not all((args.data / f"{d}.jsonl").is_file() for d in DOMAINS):
        print(f"real text data not found in {args.data} (needs {', '.join(d + '.jsonl' for d in DOMAINS)}); "
              "pass --data; nothing measured")
        return 0
    if args.write_unlabelled:
        n = write_unlabelled(args.data, args.split, args.seed, args.write_unlabelled)
        print(f"wrote {n} {args.split} passages (text only) to {args.write_unlabelled}")
        return 0

    passages = load_passages(args.data, args.split, args.seed, args.max_per_domain)
    seen_corpora = args.seen_corpus if args.seen_corpus is not None else [paths.CORPUS_DIR] * paths.CORPUS_DIR.is_dir()
    passages, mixed, seen = unseen_mixed_documents(passages, seen_corpora, args.seed)
    if seen:
        print(f"left out, seen in {', '.join(map(str, seen_corpora))}: "
              + ", ".join(f"{d} {len(ids)}" for d, ids in seen.items()), flush=True)
    sentence_labels = load_sentence_labels(args.sentence_labels)
    rows = {}
    for name, (token_dir, doc_dir) in model_rows(args.model or [str(paths.JOINT_MODEL_DIR)], args.doc_model).items():
        print(f"{name}: {token_dir} + {doc_dir}", flush=True)
        rows[name] = evaluate_model(token_dir, doc_dir, passages, mixed, sentence_labels)
    result = {
        "benchmark": "real_text", "data": str(args.data), "split": args.split, "seed": args.seed, "splits": SPLITS,
        "max_per_domain": args.max_per_domain, "note": args.note,
        "seen_corpora": [str(c) for c in seen_corpora], "seen_passages_left_out": seen,
        "passages": {d: sum(p.domain == d for p in passages) for d in DOMAINS}, "mixed_docs": len(mixed),
        "rows": rows, "goals": {n: goals_met(r) for n, r in rows.items()},
        "machine": f"{platform.machine()} {os.cpu_count()} cpus, python {sys.version.split()[0]}",
        "load_avg_end": [round(x, 2) for x in os.getloadavg()],
    }
    args.out.mkdir(parents=True, exist_ok=True)
    stem = "real_text" if args.split == "test" else f"real_text_{args.split}"
    (args.out / f"{stem}.json").write_text(json.dumps(result, indent=2) + "\n")
    md = markdown(result).replace("(real_text.png)", f"({stem}.png)")
    (args.out / f"{stem}.md").write_text(md)
    plot(result, args.out / f"{stem}.png")
    (args.out / f"{stem}_misses.md").write_text(misses_markdown(result))
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
