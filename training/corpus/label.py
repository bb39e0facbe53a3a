"""``tokfilter label``: weak labels for a corpus you bring, in the corpus format ``train-classifier --corpus`` reads.

Labels are character spans, merged from
* a lexicon: terms matched case-insensitively on word boundaries, longest match first (the matcher of
  ``weak_labels.Lexicon``). ``--lexicon FILE`` (repeatable): one term per line; blank lines and lines
  starting with ``#`` are skipped; terms are taken as given (no statistics filter, no spreading).
  Without ``--lexicon``: the medical lexicon of ``build-corpus`` (it needs that command's sources);
* optionally a teacher (``--teacher MODEL_DIR``, an exported token classifier): the characters of the
  tokens it scores at or above ``--teacher-threshold`` (default: its card threshold), the paper's
  weak-to-strong route.
A document's passages are its sentences (``tokfilter.sentences``); a sentence is of the forget domain
(``--domain``) when at least half of its characters are labelled, which gives the document classifier
its labels; ``--whole-sentences`` labels such a sentence whole, as build-corpus labels a medicine passage.
Documents go to train or validation by a seeded hash of their input position. Format: docs/corpus.md.

``--interleave X`` adds X interleaved documents per labelled one, in each split from that split's
documents only: a document with 1..MAX_INSERTIONS labelled sentences of the other side (forget-domain
sentences into a document without any, other sentences into a forget-domain one) inserted at random
sentence boundaries, so that a classifier learns to find a forget sentence by itself, not by its
neighbours (issue 12: real medical sentences inside real benign pages).
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import random
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tokfilter.clients.readers import check_inputs, iter_records
from tokfilter.errors import TokfilterError
from tokfilter.scoring import ScoringPipeline
from tokfilter.sentences import sentence_spans
from tokfilter.training.corpus.domains import FORGET
from tokfilter.training.corpus.interleave import MAX_INSERTIONS, insert_sentences, labelled_sentences
from tokfilter.training.corpus.weak_labels import MAX_TERM_WORDS, Lexicon, merge_spans, words_of
from tokfilter.windows import load_tokenizer

FORGET_SENTENCE_SHARE = 0.5  # a sentence at least this much labelled is a forget-domain passage
LABEL_BATCH_DOCS = 64  # documents scored by the teacher per call (progress granularity)
INTERLEAVE_POOL_DOCS = 50_000  # labelled documents per split kept (a seeded reservoir) to interleave from


@dataclass(frozen=True)
class LabelSettings:
    domain: str = FORGET
    lexicons: tuple[Path, ...] = ()
    teacher: Path | None = None
    teacher_threshold: float | None = None
    whole_sentences: bool = False
    interleave: float = 0.0
    validation_fraction: float = 0.1
    seed: int = 0
    text_field: str = "text"
    id_field: str = "id"


def read_lexicon_file(path: Path) -> list[str]:
    """Terms of one lexicon file (one per line; blank and ``#`` lines skipped); errors name the file and line."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except FileNotFoundError as err:
        raise TokfilterError(f"lexicon {path}: no such file") from err
    except UnicodeDecodeError as err:
        raise TokfilterError(f"lexicon {path}: not UTF-8 text (byte {err.start})") from err
    except OSError as err:
        raise TokfilterError(f"lexicon {path}: cannot be read ({err.strerror})") from err
    terms = []
    for line_number, line in enumerate(lines, 1):
        term = line.strip()
        if not term or term.startswith("#"):
            continue
        words = words_of(term)
        if not words:
            raise TokfilterError(f"lexicon {path} line {line_number}: term {term!r} has no letters or digits")
        if len(words) > MAX_TERM_WORDS:
            raise TokfilterError(f"lexicon {path} line {line_number}: term {term!r} has {len(words)} words, at most {MAX_TERM_WORDS}")
        terms.append(term)
    if not terms:
        raise TokfilterError(f"lexicon {path}: no terms (one term per line; blank and '#' lines are skipped)")
    return terms


def lexicon_from_terms(terms: Sequence[str]) -> Lexicon:
    """A lexicon of ``terms`` as given: a user's list needs no statistics filter and gets no spreading."""
    kept = {tuple(words_of(term)) for term in terms}
    return Lexicon(frozenset(kept), frozenset(term[:k] for term in kept for k in range(1, len(term) + 1)), frozenset())


def load_lexicon(paths: Sequence[Path]) -> Lexicon:
    """The user's lexicon files merged, or the medical lexicon of build-corpus when none is given."""
    if not paths:
        from tokfilter.training.corpus.build import default_lexicon

        return default_lexicon()
    return lexicon_from_terms([term for path in paths for term in read_lexicon_file(path)])


class Teacher:
    """An exported token classifier whose tokens at or above ``threshold`` become labels."""

    def __init__(self, model_dir: Path, threshold: float | None = None):
        tokenizer_path = Path(model_dir) / "tokenizer.json"
        try:
            load_tokenizer(tokenizer_path)
        except Exception as err:  # tokenizers raises its own exception types for a missing or bad file
            raise TokfilterError(f"teacher {model_dir}: tokenizer {tokenizer_path} does not load ({err})") from err
        self.pipeline = ScoringPipeline.from_model_dirs(model_dir)
        self.threshold = self.pipeline.threshold if threshold is None else threshold
        if not 0.0 < self.threshold <= 1.0:
            raise TokfilterError(f"--teacher-threshold must be in (0, 1], got {self.threshold}")

    def spans(self, texts: Sequence[str]) -> list[list[tuple[int, int]]]:
        return [[(s.start, s.end) for s in r.spans] for r in self.pipeline.score(texts, self.threshold)]


def read_documents(inputs: Sequence[str], text_field: str, id_field: str) -> Iterator[tuple[str, str]]:
    """(id, text) of every record; an unreadable file or a malformed record is an error naming it."""
    check_inputs(list(inputs))
    for index, path in enumerate(inputs):
        try:
            for record in iter_records(path, index, text_field, id_field):
                if record.error:
                    raise TokfilterError(record.error)
                yield record.doc_id, record.text
        except (OSError, EOFError) as err:
            raise TokfilterError(f"input {path}: cannot be read ({err})") from err
        except TokfilterError:
            raise
        except Exception as err:  # pyarrow and zstandard raise their own types on a corrupt file
            raise TokfilterError(f"input {path}: cannot be read as {Path(path).suffix or 'JSONL'} ({type(err).__name__}: {err})") from err


def sentence_passages(text: str, spans: Sequence[Sequence[int]], domain: str) -> list[dict]:
    """One passage per sentence, of ``domain`` when at least FORGET_SENTENCE_SHARE of its characters are labelled."""
    marks = np.zeros(len(text) + 1, dtype=np.int64)
    for s, e in spans:
        marks[s] += 1
        marks[e] -= 1
    labelled_before = np.concatenate([[0], np.cumsum(np.cumsum(marks)[:-1] > 0)])  # labelled characters in text[:i]
    passages = []
    for start, end in sentence_spans(text):
        forget = labelled_before[end] - labelled_before[start] >= FORGET_SENTENCE_SHARE * (end - start)
        passages.append({"start": start, "end": end, "domain": domain if forget else "other"})
    return passages


def label_texts(texts: Sequence[str], lexicon: Lexicon, teacher: Teacher | None, settings: LabelSettings) -> list[dict]:
    """``meta`` (passages, label_spans, forget_domain) of each text."""
    teacher_spans = teacher.spans(texts) if teacher else [[] for _ in texts]
    metas = []
    for text, from_teacher in zip(texts, teacher_spans):
        spans = merge_spans([*map(tuple, lexicon.matches(text)), *from_teacher], text)
        passages = sentence_passages(text, spans, settings.domain)
        if settings.whole_sentences:
            spans = merge_spans([*map(tuple, spans), *((p["start"], p["end"]) for p in passages if p["domain"] == settings.domain)], text)
        metas.append({"forget_domain": settings.domain, "passages": passages, "label_spans": spans})
    return metas


def split_of(position: int, settings: LabelSettings) -> str:
    u = int.from_bytes(hashlib.sha256(f"label:{settings.seed}:{position}".encode()).digest()[:8], "big") / 2**64
    return "validation" if u < settings.validation_fraction else "train"


def label_corpus(inputs: Sequence[str], out_dir: Path, settings: LabelSettings, log=sys.stderr) -> dict:
    """Label every document of ``inputs`` into ``out_dir`` (train.jsonl, validation.jsonl, manifest.json)."""
    if not settings.domain.strip():
        raise TokfilterError("--domain must not be empty")
    if not 0.0 <= settings.validation_fraction < 1.0:
        raise TokfilterError(f"--validation-fraction must be in [0, 1), got {settings.validation_fraction}")
    lexicon = load_lexicon(settings.lexicons)
    teacher = Teacher(settings.teacher, settings.teacher_threshold) if settings.teacher else None
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise TokfilterError(f"--out {str(out)!r} cannot be created: {err.strerror}") from err
    if not 0.0 <= settings.interleave <= 100.0:
        raise TokfilterError(f"--interleave must be in [0, 100] documents per labelled document, got {settings.interleave}")
    counts = {split: {"docs": 0, "chars": 0, "labelled_chars": 0, "forget_docs": 0, "interleaved_docs": 0}
              for split in ("train", "validation")}
    pools = {split: DocumentReservoir(INTERLEAVE_POOL_DOCS, settings.seed) for split in counts}
    started = last = time.monotonic()
    files = {split: open(out / f"{split}.jsonl", "w", encoding="utf-8", newline="\n") for split in counts}
    try:
        position = 0
        documents = read_documents(inputs, settings.text_field, settings.id_field)
        while True:
            batch = list(itertools.islice(documents, LABEL_BATCH_DOCS))
            if not batch:
                break
            for (doc_id, text), meta in zip(batch, label_texts([t for _, t in batch], lexicon, teacher, settings)):
                split = split_of(position, settings)
                position += 1
                write_labelled(files[split], counts[split], doc_id, text, {"split": split, **meta}, settings.domain)
                if settings.interleave:
                    pools[split].add((doc_id, text, meta))
            now = time.monotonic()
            if now - last > 10:
                last = now
                chars = sum(c["chars"] for c in counts.values())
                print(f"[label] {position:,} documents, {chars / (now - started) / 1e3:,.0f}k chars/s", file=log, flush=True)
        if position and settings.interleave:
            for split, pool in pools.items():
                n_docs = round(settings.interleave * counts[split]["docs"])
                for doc_id, text, meta in interleaved_documents(pool.items, n_docs, settings.domain, random.Random(f"{settings.seed}:{split}")):
                    write_labelled(files[split], counts[split], doc_id, text, {"split": split, **meta}, settings.domain)
                    counts[split]["interleaved_docs"] += 1
    finally:
        for fh in files.values():
            fh.close()
    if position == 0:
        raise TokfilterError(f"no documents in {', '.join(inputs)}")
    manifest = {
        "domain": settings.domain, "lexicons": [str(p) for p in settings.lexicons] or ["medical lexicon of build-corpus"],
        "lexicon_terms": len(lexicon.terms), "teacher": str(settings.teacher) if teacher else None,
        "teacher_threshold": teacher.threshold if teacher else None, "whole_sentences": settings.whole_sentences,
        "interleave": settings.interleave,
        "validation_fraction": settings.validation_fraction, "seed": settings.seed, "inputs": list(inputs),
        "splits": {split: {**c, "labelled_share": round(c["labelled_chars"] / max(1, c["chars"]), 4)} for split, c in counts.items()},
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return manifest


def write_labelled(fh, counts: dict, doc_id: str, text: str, meta: dict, domain: str) -> None:
    """One labelled document as a corpus line, counted in its split's statistics."""
    fh.write(json.dumps({"id": doc_id, "text": text, "meta": meta}, ensure_ascii=False, separators=(",", ":")) + "\n")
    counts["docs"] += 1
    counts["chars"] += len(text)
    counts["labelled_chars"] += sum(e - s for s, e in meta["label_spans"])
    counts["forget_docs"] += any(p["domain"] == domain for p in meta["passages"])


class DocumentReservoir:
    """A seeded uniform sample of at most ``size`` of the items added (reservoir sampling): a bounded
    pool to interleave from, however large the corpus."""

    def __init__(self, size: int, seed: int):
        self.size, self.seen, self.items = size, 0, []
        self.rng = random.Random(f"reservoir:{seed}")

    def add(self, item) -> None:
        self.seen += 1
        if len(self.items) < self.size:
            self.items.append(item)
        elif (k := self.rng.randrange(self.seen)) < self.size:
            self.items[k] = item


def interleaved_documents(documents: Sequence[tuple[str, str, dict]], n_docs: int, domain: str,
                          rng: random.Random) -> Iterator[tuple[str, str, dict]]:
    """``n_docs`` documents (id, text, meta) made from labelled ``documents``: a host with 1..MAX_INSERTIONS
    sentences of the other side inserted; nothing when one side has no sentence."""
    units: dict[bool, list] = {True: [], False: []}
    for _, text, meta in documents:
        for unit in labelled_sentences(text, meta):
            if unit[0].strip():
                units[unit[1]["domain"] == domain].append(unit)
    if not units[True] or not units[False]:
        return
    for k in range(n_docs):
        host_id, text, meta = rng.choice(documents)
        domains = {p["domain"] == domain for p in meta["passages"]}
        insert_forget = domains != {True}  # a wholly forget document gets other sentences, any other forget ones
        inserts = [rng.choice(units[insert_forget]) for _ in range(rng.randint(1, MAX_INSERTIONS))]
        out_text, out_meta = insert_sentences(text, meta, inserts, rng)
        yield f"{host_id}+interleaved{k}", out_text, out_meta


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="JSONL (.jsonl, .gz, .zst) or Parquet files with a text field")
    parser.add_argument("--out", type=Path, required=True, help="corpus dir to write (train.jsonl, validation.jsonl, manifest.json)")
    parser.add_argument("--lexicon", type=Path, action="append", default=[], metavar="FILE",
                        help="term list, one per line (repeatable; default: the medical lexicon of build-corpus)")
    parser.add_argument("--domain", default=FORGET, help=f"name of the forget domain (default: {FORGET})")
    parser.add_argument("--teacher", type=Path, help="exported token classifier dir whose confident tokens become labels too")
    parser.add_argument("--teacher-threshold", type=float, help="teacher tokens at or above this are labels (default: its card threshold)")
    parser.add_argument("--whole-sentences", action="store_true", help="label a sentence whole when at least half of it is labelled")
    parser.add_argument("--interleave", type=float, default=0.0, metavar="X",
                        help="also write X interleaved documents per labelled one: labelled sentences of one side "
                             "inserted into documents of the other (default 0)")
    parser.add_argument("--validation-fraction", type=float, default=0.1, help="share of documents in validation.jsonl (default 0.1)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--text-field", default="text")
    parser.add_argument("--id-field", default="id")


def main(args: argparse.Namespace) -> int:
    settings = LabelSettings(domain=args.domain, lexicons=tuple(args.lexicon), teacher=args.teacher,
                             teacher_threshold=args.teacher_threshold, whole_sentences=args.whole_sentences, interleave=args.interleave,
                             validation_fraction=args.validation_fraction, seed=args.seed, text_field=args.text_field,
                             id_field=args.id_field)
    started = time.monotonic()
    manifest = label_corpus(args.inputs, args.out, settings)
    for split, s in manifest["splits"].items():
        print(f"  {split}: {s['docs']:,} documents ({s['interleaved_docs']:,} interleaved), {s['labelled_share']:.2%} of characters labelled {settings.domain}, "
              f"{s['forget_docs']:,} with a {settings.domain} sentence")
    print(f"corpus {args.out} labelled in {time.monotonic() - started:.0f}s; train with "
          f"`tokfilter train-classifier --task joint --corpus {args.out}` (token and document heads, the default model; "
          f"--task token for a token model alone)")
    return 0
