"""Interleaved documents: sentences of the other side spliced into paragraphs at random positions.

The composed documents of build.py are uniform, or carry one medical paragraph, so a classifier can
read a sentence's label off its neighbours; on real prose it then misses a medical sentence inside a
benign paragraph (issue 12). Here a host document of one domain (general, biology or medicine) gets
0 to MAX_INSERTIONS sentences of the other side (medicine into benign hosts, general or biology into
medical ones) at random sentence positions, so neighbours do not predict a sentence's label: only
the sentence itself does. Sentence units are the corpus items (a definition renders as one
sentence) and the sentences of prose items (news, fortunes), drawn from one split only.

``tokfilter label --interleave`` does the same for a corpus a user brings, from its weak labels alone:
labelled sentences of one side are inserted into whole documents of the other (``insert_sentences``).
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Sequence

from tokfilter.sentences import split_sentences
from tokfilter.training.corpus.domains import FORGET, GENERAL, MIXED, RETAIN
from tokfilter.training.corpus.sources import SourceItem

# Interleaved documents added per composed document of a split, chosen on the dev split of the real
# passages (benchmarks/real_text.py --split dev, 120-step token models): 3.0 against 1.0 raised the
# mixed real-document token F1 from 0.627 to 0.686 and the context ratio from 0.595 to 0.715.
INTERLEAVED_DOCS_PER_DOC = 3.0
HOST_DOMAINS = {GENERAL: 0.4, RETAIN: 0.3, FORGET: 0.3}  # host draw probabilities
HOST_SENTENCES = (3, 12)
MAX_INSERTIONS = 3  # 0..MAX_INSERTIONS, uniform: a quarter of the hosts stay pure, a cue-free negative
HOST_PARAGRAPHS = (1, 3)


def sentence_units(items: Sequence[SourceItem]) -> list[SourceItem]:
    """One unit per sentence: a definition item is one sentence; a prose item (no term) gives one
    unit per sentence, ids ``{item_id}#s{k}``, so its sentences can be spliced apart."""
    units = []
    for item in items:
        if item.term:
            units.append(item)
            continue
        for k, sentence in enumerate(split_sentences(item.definition)):
            units.append(SourceItem(f"{item.item_id}#s{k}", item.source, item.domain, "", sentence, item.group))
    return units


def interleaved_documents(items: Sequence[SourceItem], n_docs: int, rng: random.Random) -> list[tuple[str, list[list[SourceItem]]]]:
    """``n_docs`` documents as (domain, paragraphs of sentence units): a host of HOST_SENTENCES
    sentences of one domain with 0..MAX_INSERTIONS sentences of the other side at random positions.
    The domain is "mixed" when the document holds both sides, else the host's."""
    pools: dict[str, list[SourceItem]] = defaultdict(list)
    for unit in sentence_units(items):
        pools[unit.domain].append(unit)
    hosts = [d for d in HOST_DOMAINS if pools[d]]
    if not hosts or not pools[FORGET] or not any(pools[d] for d in hosts if d != FORGET):
        return []
    weights = [HOST_DOMAINS[d] for d in hosts]
    benign = [d for d in hosts if d != FORGET]
    documents = []
    for _ in range(n_docs):
        host = rng.choices(hosts, weights)[0]
        sentences = [rng.choice(pools[host]) for _ in range(rng.randint(*HOST_SENTENCES))]
        n_inserted = rng.randint(0, MAX_INSERTIONS)
        for _ in range(n_inserted):
            other = FORGET if host != FORGET else rng.choice(benign)
            sentences.insert(rng.randint(0, len(sentences)), rng.choice(pools[other]))
        cuts = sorted(rng.sample(range(1, len(sentences)), min(len(sentences) - 1, rng.randint(*HOST_PARAGRAPHS) - 1)))
        paragraphs = [sentences[a:b] for a, b in zip([0] + cuts, cuts + [len(sentences)])]
        documents.append((MIXED if n_inserted else host, paragraphs))
    return documents


def insert_sentences(text: str, meta: dict, inserts: Sequence[tuple[str, dict]], rng: random.Random) -> tuple[str, dict]:
    """``text`` (a labelled document: ``meta`` has ``passages`` and ``label_spans``) with each insert, a
    labelled sentence (its text and its passage, whose ``spans`` are relative to it), placed before a
    random one of its sentences or at its end; passages and spans move with the text."""
    passages = sorted(meta["passages"], key=lambda p: p["start"])
    cuts = sorted(rng.choice([p["start"] for p in passages] + [len(text)]) for _ in inserts)
    pieces, new_passages, new_spans = [], [], []
    pos = shift = 0
    host_passages = iter(passages + [None])
    host_spans = iter([*map(tuple, meta["label_spans"]), None])
    passage, span = next(host_passages), next(host_spans)
    for cut, (sentence, inserted) in zip(cuts, inserts):
        while passage is not None and passage["start"] < cut:
            new_passages.append({**passage, "start": passage["start"] + shift, "end": passage["end"] + shift})
            passage = next(host_passages)
        while span is not None and span[0] < cut:
            if span[1] > cut:  # a span over several sentences (merged across a space) is cut in two
                new_spans.append((span[0] + shift, cut + shift))
                span = (cut, span[1])
            else:
                new_spans.append((span[0] + shift, span[1] + shift))
                span = next(host_spans)
        pieces.append(text[pos:cut])
        pos = cut
        joined = sentence + " " if cut < len(text) else " " + sentence
        at = cut + shift + (0 if cut < len(text) else 1)
        new_passages.append({"start": at, "end": at + len(sentence), "domain": inserted["domain"]})
        new_spans += [(at + s, at + e) for s, e in inserted["spans"]]
        pieces.append(joined)
        shift += len(joined)
    while passage is not None:
        new_passages.append({**passage, "start": passage["start"] + shift, "end": passage["end"] + shift})
        passage = next(host_passages)
    while span is not None:
        new_spans.append((span[0] + shift, span[1] + shift))
        span = next(host_spans)
    pieces.append(text[pos:])
    out = "".join(pieces)
    return out, {**meta, "passages": new_passages, "label_spans": [list(s) for s in sorted(new_spans)]}


def labelled_sentences(text: str, meta: dict) -> list[tuple[str, dict]]:
    """Each sentence passage of a labelled document as (text, passage with ``spans`` relative to it)."""
    units = []
    for p in meta["passages"]:
        spans = [(max(s, p["start"]) - p["start"], min(e, p["end"]) - p["start"])
                 for s, e in meta["label_spans"] if s < p["end"] and e > p["start"]]
        units.append((text[p["start"]:p["end"]], {"domain": p["domain"], "spans": spans}))
    return units
