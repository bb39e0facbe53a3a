"""The seeded demo corpus: general, biology, medicine and *mixed* documents with weak labels.

Documents are built from source items (sources.py): each item becomes one sentence-like passage
("term: definition", an ICD code line, a news article, a fortune); passages of one source form
paragraphs; paragraphs form documents. Mixed documents are benign documents with a short medical
paragraph inserted, so token filtering can beat document filtering; interleaved documents
(interleave.py) splice single sentences of the other side into documents of every domain, so a
sentence's label cannot be read off its neighbours. MEDLINE abstracts (the real research prose) and
Wikipedia lead sections (the encyclopedic prose) get their domain from passage_domains.py and give
sentences to the interleaved documents only. Splits are drawn per group of
items sharing a term, a definition or an ICD category, so no term or definition is in two splits.
Decisions (anatomy and physiology, sizes, weak-label rules): docs/corpus.md.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import os
import random
import re
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from tokfilter.errors import TokfilterError
from tokfilter.paths import CORPUS_DIR
from tokfilter.training.corpus import sources
from tokfilter.training.corpus.domains import DOCUMENT_DOMAINS, FORGET, GENERAL, MIXED, RETAIN
from tokfilter.training.corpus.interleave import INTERLEAVED_DOCS_PER_DOC, interleaved_documents
from tokfilter.training.corpus.passage_domains import assign_domains
from tokfilter.training.corpus.sources import SourceInfo, SourceItem
from tokfilter.training.corpus.weak_labels import Lexicon, build_lexicon, count_words, flip_label_spans, label_document

SPLITS = ("train", "validation", "test")
SPLIT_FRACTIONS = (0.8, 0.1, 0.1)
TOKEN = re.compile(r"\w+|[^\w\s]")  # token-ish unit of the statistics (words and punctuation)


@dataclass(frozen=True)
class SizeConfig:
    """How much of each source a corpus size uses."""

    item_fraction: float  # of every source's items (of groups for ICD)
    icd_fraction: float  # of ICD-10-CM groups, on top of item_fraction: ICD would swamp medicine


SIZES = {
    "default": SizeConfig(item_fraction=1.0, icd_fraction=0.2),
    "small": SizeConfig(item_fraction=0.12, icd_fraction=0.2),
    "tiny": SizeConfig(item_fraction=0.012, icd_fraction=0.2),
}
# Share of the medicine items that go, as short paragraphs, into otherwise benign (mixed) documents.
MIXED_MEDICINE_FRACTION = 0.2
PARAGRAPH_ITEMS = {"hpo": (2, 6), "icd10cm": (2, 8), "wordnet": (3, 8), "gene_ontology": (2, 6),
                   "lee_news": (1, 1), "fortunes": (1, 3)}
MIXED_PARAGRAPH_ITEMS = (1, 3)
# Sources that give sentences to the interleaved documents only, never whole passages: one label for a
# whole MEDLINE abstract covers its clinical and its basic-science sentences alike, and a classifier
# trained on whole abstracts read the context again (real-text dev split: context ratio 0.896 -> 0.629,
# token F1 in biology hosts 0.70 -> 0.51, while sentences alone were found more often). Wikipedia
# leads likewise: an article's label covers its history and its symptoms alike.
SENTENCE_ONLY_SOURCES = frozenset({"medline", "wikipedia"})
DOC_PARAGRAPHS = {GENERAL: (2, 5), RETAIN: (2, 5), FORGET: (1, 4)}
BIOLOGY_GENERAL_PARAGRAPH_P = 0.3  # a biology document sometimes carries a general paragraph too
IN_PARAGRAPH_INSERT_P = 0.5  # a mixed document's medical passage sits inside a paragraph, else between
DEFINITION_TEMPLATES = ("{term}: {definition}", "{term} - {definition}", "{term} refers to {definition_lower}")


@dataclass
class _Paragraph:
    domain: str
    items: list[SourceItem]


def _fraction_of(key: str, seed: int) -> float:
    """A stable pseudo-random number in [0, 1) for a key (independent of Python's hash seed)."""
    digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


@functools.lru_cache(maxsize=1)
def load_labelled_sources() -> tuple[tuple[SourceItem, ...], dict[str, tuple[str, ...]], dict[str, SourceInfo]]:
    """The sources whose domains are known (each item's, or the source's), the raw lexicon terms of
    each lexicon source and the provenance of each source (cached: a test session builds several
    tiny corpora)."""
    items: list[SourceItem] = []
    lexicon_terms: dict[str, tuple[str, ...]] = {}
    infos: dict[str, SourceInfo] = {}
    for loader in (sources.load_hpo, sources.load_icd10cm):
        source_items, terms, info = loader()
        items += source_items
        lexicon_terms[info.name] = tuple(terms)
        infos[info.name] = info
    for name_loader in (sources.load_drug_names, sources.load_disease_names):
        terms, info = name_loader()
        lexicon_terms[info.name] = tuple(terms)
        infos[info.name] = info
    for loader in (sources.load_gene_ontology, sources.load_wordnet, sources.load_lee_news, sources.load_fortunes):
        source_items, info = loader()
        items += source_items
        infos[info.name] = info
    return tuple(items), lexicon_terms, infos


@functools.lru_cache(maxsize=1)
def load_sources() -> tuple[tuple[SourceItem, ...], dict[str, tuple[str, ...]], dict[str, SourceInfo]]:
    """The labelled sources plus the MEDLINE abstracts (medicine or biology) and Wikipedia leads
    (medicine or general) whose domain passage_domains.py can tell."""
    items, lexicon_terms, infos = load_labelled_sources()
    abstracts, medline = sources.load_medline_abstracts()
    leads, wikipedia = sources.load_wikipedia_leads()
    assigned = assign_domains(items, abstracts) + assign_domains(items, leads, other_side=GENERAL)
    return items + tuple(assigned), lexicon_terms, {**infos, medline.name: medline, wikipedia.name: wikipedia}


@functools.lru_cache(maxsize=1)
def default_lexicon() -> Lexicon:
    """The lexicon built from the labelled sources (cached like them). MEDLINE abstracts stay out of
    its word statistics: their domains come from a classifier of these very items."""
    items, lexicon_terms, _ = load_labelled_sources()
    return make_lexicon(items, [term for terms in lexicon_terms.values() for term in terms])


def make_lexicon(items: Sequence[SourceItem], lexicon_terms: Sequence[str]) -> Lexicon:
    """The weak-label lexicon, filtered by word statistics of the medical, general and biology items.
    Medical statistics come from medical prose only: ICD code lines would make "left" medical."""
    def counts(domain: str) -> Counter[str]:
        return count_words(f"{i.term} {i.definition}" for i in items if i.domain == domain and i.source != "icd10cm")

    return build_lexicon(lexicon_terms, counts(FORGET), counts(GENERAL), counts(RETAIN))


def select_items(items: Sequence[SourceItem], config: SizeConfig, seed: int) -> list[SourceItem]:
    """The items a corpus size uses, drawn per group so the codes under one ICD parent stay together."""
    chosen = []
    for item in items:
        key = item.group or item.item_id
        fraction = config.item_fraction * (config.icd_fraction if item.source == "icd10cm" else 1.0)
        if _fraction_of(f"select:{key}", seed) < fraction:
            chosen.append(item)
    return chosen


def assign_splits(items: Sequence[SourceItem], seed: int) -> dict[str, str]:
    """Split of each item: items linked by a shared term, definition or group form one component
    (union-find), and each component goes to one split by a seeded hash of its first item id."""
    parent = list(range(len(items)))

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    owner: dict[str, int] = {}
    for index, item in enumerate(items):
        keys = [f"d:{item.definition.lower()}"]
        if item.term:
            keys.append(f"t:{item.term.lower()}")
        if item.group:
            keys.append(f"g:{item.group}")
        for key in keys:
            if key in owner:
                a, b = find(owner[key]), find(index)
                if a != b:
                    parent[max(a, b)] = min(a, b)
            else:
                owner[key] = index
    splits = {}
    for index, item in enumerate(items):
        root = items[find(index)].item_id
        u = _fraction_of(f"split:{root}", seed)
        splits[item.item_id] = SPLITS[0] if u < SPLIT_FRACTIONS[0] else SPLITS[1] if u < SPLIT_FRACTIONS[0] + SPLIT_FRACTIONS[1] else SPLITS[2]
    return splits


def _chunk(items: list[SourceItem], bounds: tuple[int, int], domain: str, rng: random.Random) -> list[_Paragraph]:
    paragraphs = []
    i = 0
    while i < len(items):
        n = rng.randint(*bounds)
        paragraphs.append(_Paragraph(domain, items[i:i + n]))
        i += n
    return paragraphs


def _paragraphs_of_source(items: list[SourceItem], rng: random.Random) -> list[_Paragraph]:
    """Paragraphs of one source and domain: ICD codes grouped by parent code, others shuffled."""
    bounds = PARAGRAPH_ITEMS[items[0].source]
    domain = items[0].domain
    if items[0].source != "icd10cm":
        items = items[:]
        rng.shuffle(items)
        return _chunk(items, bounds, domain, rng)
    by_group: dict[str, list[SourceItem]] = defaultdict(list)
    for item in items:
        by_group[item.group].append(item)
    paragraphs = []
    for group in sorted(by_group):
        paragraphs += _chunk(by_group[group], bounds, domain, rng)
    return paragraphs


def _sentence(item: SourceItem, rng: random.Random) -> str:
    if item.source == "icd10cm":
        return f"{item.term} (ICD-10-CM {item.item_id.split(':', 1)[1]})."
    if not item.term:
        return item.definition
    definition = item.definition.rstrip(". ")
    template = DEFINITION_TEMPLATES[rng.randrange(len(DEFINITION_TEMPLATES))]
    return template.format(term=item.term, definition=definition,
                           definition_lower=definition[:1].lower() + definition[1:]) + "."


def _render(paragraphs: Sequence[_Paragraph], rng: random.Random) -> tuple[str, list[dict]]:
    """Document text and its passages (one per item), paragraphs separated by a blank line."""
    parts: list[str] = []
    passages: list[dict] = []
    position = 0
    for p_index, paragraph in enumerate(paragraphs):
        if p_index:
            parts.append("\n\n")
            position += 2
        for s_index, item in enumerate(paragraph.items):
            if s_index:
                parts.append(" ")
                position += 1
            sentence = _sentence(item, rng)
            passages.append({"start": position, "end": position + len(sentence), "domain": item.domain,
                             "source": item.source, "item_id": item.item_id})
            parts.append(sentence)
            position += len(sentence)
    return "".join(parts), passages


def compose_documents(items: Sequence[SourceItem], rng: random.Random) -> list[tuple[str, list[_Paragraph]]]:
    """(domain, paragraphs) of the documents of one split, in a seeded random order."""
    by_source: dict[tuple[str, str], list[SourceItem]] = defaultdict(list)
    for item in items:
        if item.source not in SENTENCE_ONLY_SOURCES:
            by_source[(item.source, item.domain)].append(item)
    pools: dict[str, list[_Paragraph]] = {GENERAL: [], RETAIN: [], FORGET: []}
    mixed_inserts: list[_Paragraph] = []
    for key in sorted(by_source):
        source_items = by_source[key]
        if key[1] == FORGET:
            source_items = source_items[:]
            rng.shuffle(source_items)
            n_mixed = round(len(source_items) * MIXED_MEDICINE_FRACTION)
            mixed_inserts += _chunk(source_items[:n_mixed], MIXED_PARAGRAPH_ITEMS, FORGET, rng)
            source_items = source_items[n_mixed:]
            if not source_items:
                continue
        pools[key[1]] += _paragraphs_of_source(source_items, rng)
    for pool in pools.values():
        rng.shuffle(pool)

    documents: list[tuple[str, list[_Paragraph]]] = []
    general = pools[GENERAL]
    for domain in (FORGET, RETAIN, GENERAL):
        pool = pools[domain]
        while pool:
            n = rng.randint(*DOC_PARAGRAPHS[domain])
            paragraphs, pool[:] = pool[:n], pool[n:]
            if domain == RETAIN and general and rng.random() < BIOLOGY_GENERAL_PARAGRAPH_P:
                paragraphs.insert(rng.randint(0, len(paragraphs)), general.pop())
            documents.append((domain, paragraphs))

    benign = [i for i, (domain, _) in enumerate(documents) if domain != FORGET]
    rng.shuffle(benign)
    for insert, doc_index in zip(mixed_inserts, benign):
        _, paragraphs = documents[doc_index]
        target = rng.randrange(len(paragraphs))
        if rng.random() < IN_PARAGRAPH_INSERT_P and len(paragraphs[target].items) > 1:
            host = paragraphs[target]  # the medical sentences go between two sentences of a paragraph
            cut = rng.randint(1, len(host.items) - 1)
            paragraphs[target] = _Paragraph(host.domain, host.items[:cut] + insert.items + host.items[cut:])
        else:
            paragraphs.insert(rng.randint(0, len(paragraphs)), insert)
        documents[doc_index] = (MIXED, paragraphs)
    rng.shuffle(documents)
    return documents


def with_interleaved(documents: list[tuple[str, list[_Paragraph]]], items: Sequence[SourceItem],
                     rng: random.Random) -> list[tuple[str, list[_Paragraph]]]:
    """The composed documents of a split plus INTERLEAVED_DOCS_PER_DOC interleaved documents per
    document (interleave.py: sentences of the other side at random positions), shuffled together."""
    extra = interleaved_documents(items, round(INTERLEAVED_DOCS_PER_DOC * len(documents)), rng)
    documents = documents + [(domain, [_Paragraph(domain, p) for p in paragraphs]) for domain, paragraphs in extra]
    rng.shuffle(documents)
    return documents


def _token_count(text: str) -> int:
    return len(TOKEN.findall(text))


def build_corpus(out_dir: str | Path = CORPUS_DIR, seed: int = 0, size: str = "default",
                 label_noise: float = 0.0, progress: bool = False) -> dict:
    """Build the corpus into ``out_dir`` and return its manifest (also written as manifest.json)."""
    if size not in SIZES:
        raise TokfilterError(f"size must be one of {', '.join(SIZES)}, got {size!r}")
    if not 0.0 <= label_noise <= 1.0:
        raise TokfilterError(f"label_noise must be in [0, 1], got {label_noise}")
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise TokfilterError(f"out_dir {str(out)!r} cannot be created: {err.strerror}") from err
    if not os.access(out, os.W_OK):
        raise TokfilterError(f"out_dir {str(out)!r} is not writable")
    log = _Progress(progress)

    all_items, lexicon_terms, infos = load_sources()
    log.stage(f"loaded {len(all_items):,} source items and {sum(map(len, lexicon_terms.values())):,} lexicon terms")
    lexicon = default_lexicon()
    log.stage(f"lexicon: {len(lexicon.terms):,} terms, {len(lexicon.spread_words):,} spreading words")
    items = select_items(all_items, SIZES[size], seed)
    split_of = assign_splits(items, seed)
    log.stage(f"selected {len(items):,} items for size {size!r} and assigned splits")

    rng = random.Random(seed)
    noise_rng = random.Random(f"{seed}:label-noise")  # own stream: noise never changes the texts
    stats: dict[str, dict] = {}
    documents_of = {}
    for split in SPLITS:
        split_items = [i for i in items if split_of[i.item_id] == split]
        documents_of[split] = with_interleaved(compose_documents(split_items, rng), split_items, rng)
    log.start_writing(sum(map(len, documents_of.values())))
    for split, documents in documents_of.items():
        split_stats = {"docs": Counter(), "tokens": Counter(), "chars": 0, "medicine_tokens": 0}
        with open(out / f"{split}.jsonl", "w", encoding="utf-8", newline="\n") as fh:
            for index, (domain, paragraphs) in enumerate(documents):
                text, passages = _render(paragraphs, rng)
                spans = label_document(text, passages, lexicon)
                if label_noise:
                    spans = flip_label_spans(text, spans, label_noise, noise_rng)
                record = {"id": f"{split}-{index:06d}", "text": text,
                          "meta": {"split": split, "domain": domain, "passages": passages, "label_spans": spans}}
                fh.write(json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n")
                tokens = _token_count(text)
                split_stats["docs"][domain] += 1
                split_stats["tokens"][domain] += tokens
                split_stats["chars"] += len(text)
                split_stats["medicine_tokens"] += sum(_token_count(text[s:e]) for s, e in spans)
                log.tick(tokens)
        stats[split] = split_stats
        log.stage(f"wrote {split}: {len(documents):,} documents")

    used = Counter(i.source for i in items)
    per_split = defaultdict(Counter)
    for item in items:
        per_split[item.source][split_of[item.item_id]] += 1
    with open(out / "items.jsonl", "w", encoding="utf-8", newline="\n") as fh:
        for item in sorted(items, key=lambda i: i.item_id):
            if item.term:
                fh.write(json.dumps({"item_id": item.item_id, "source": item.source, "domain": item.domain,
                                     "term": item.term, "definition": item.definition,
                                     "split": split_of[item.item_id]}, ensure_ascii=False) + "\n")
    available = Counter(i.source for i in all_items)
    total_tokens = sum(sum(s["tokens"].values()) for s in stats.values())
    total_docs = sum(sum(s["docs"].values()) for s in stats.values())
    manifest = {
        "seed": seed, "size": size, "label_noise": label_noise,
        "sources": {name: {**asdict(info), "items_available": available.get(name, 0), "items_used": used.get(name, 0),
                           "items_per_split": dict(sorted(per_split[name].items())),
                           "lexicon_terms": len(lexicon_terms.get(name, ()))}
                    for name, info in sorted(infos.items())},
        "lexicon": {"terms": len(lexicon.terms), "spread_words": len(lexicon.spread_words)},
        "splits": {split: {"docs": {d: s["docs"][d] for d in DOCUMENT_DOMAINS}, "tokens": {d: s["tokens"][d] for d in DOCUMENT_DOMAINS},
                           "chars": s["chars"], "medicine_label_tokens": s["medicine_tokens"]}
                   for split, s in stats.items()},
        "docs": total_docs,
        "chars": sum(s["chars"] for s in stats.values()),
        "tokens": total_tokens,
        "medicine_token_share": round(sum(s["medicine_tokens"] for s in stats.values()) / max(1, total_tokens), 4),
        "mixed_doc_share": round(sum(s["docs"][MIXED] for s in stats.values()) / max(1, total_docs), 4),
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    log.stage("wrote items.jsonl and manifest.json")
    return manifest


def read_corpus(path: str | Path) -> Iterator[dict]:
    """Documents of one corpus JSONL file, one dict per line."""
    path = Path(path)
    if not path.is_file():
        raise TokfilterError(f"corpus file {str(path)!r} not found; run `tokfilter build-corpus`")
    with open(path, encoding="utf-8") as fh:
        for line_number, line in enumerate(fh, 1):
            if line.strip():
                try:
                    yield json.loads(line)
                except json.JSONDecodeError as err:
                    raise TokfilterError(f"corpus file {str(path)!r} line {line_number}: invalid JSON ({err.msg})") from err


class _Progress:
    """Stage timings, then documents written, tokens/s and ETA on stderr (the default build takes
    about a minute)."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.start = self.last_print = self.writing_start = time.monotonic()
        self.total_docs = self.docs = self.tokens = 0

    def stage(self, message: str) -> None:
        self.last_print = time.monotonic()
        if self.enabled:
            print(f"[{time.monotonic() - self.start:6.1f}s] {message}", file=sys.stderr, flush=True)

    def start_writing(self, total_docs: int) -> None:
        self.writing_start = time.monotonic()
        self.total_docs = total_docs
        self.stage(f"composed {total_docs:,} documents; rendering, labelling and writing")

    def tick(self, tokens: int) -> None:
        self.docs += 1
        self.tokens += tokens
        now = time.monotonic()
        if self.enabled and now - self.last_print > 5.0:
            self.last_print = now
            elapsed = max(1e-9, now - self.writing_start)
            eta = (self.total_docs - self.docs) * elapsed / self.docs
            print(f"[{now - self.start:6.1f}s] {self.docs:,}/{self.total_docs:,} docs, "
                  f"{self.tokens / elapsed:,.0f} tokens/s, ETA {eta:.0f}s", file=sys.stderr, flush=True)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, default=CORPUS_DIR, help=f"output directory (default {CORPUS_DIR})")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--size", default="default", help=f"one of {', '.join(SIZES)} (default: default)")
    parser.add_argument("--label-noise", type=float, default=0.0,
                        help="flip each word's weak label with this probability (label-noise ablation)")


def main(args: argparse.Namespace) -> int:
    started = time.monotonic()
    manifest = build_corpus(args.out, seed=args.seed, size=args.size, label_noise=args.label_noise, progress=True)
    seconds = time.monotonic() - started
    print(f"corpus {args.out}: {manifest['docs']:,} docs, {manifest['chars'] / 1e6:.1f} MB of text, "
          f"{manifest['tokens']:,} tokens; medicine token share {manifest['medicine_token_share']:.1%}, "
          f"mixed docs {manifest['mixed_doc_share']:.1%}; built in {seconds:.0f}s")
    for split, s in manifest["splits"].items():
        docs = ", ".join(f"{d} {n:,}" for d, n in s["docs"].items())
        print(f"  {split}: {docs}")
    return 0
