"""Weak labels of the forget domain (medicine) as character spans.

Two sources of labels, merged into sorted, non-overlapping, half-open ``[start, end)`` spans:
1. passage level: every passage whose source item is medicine is labelled whole;
2. lexicon matches anywhere else: drug, disease, HPO and ICD terms, matched case-insensitively on
   word boundaries (longest match first, over a word n-gram prefix set), then *spread* to
   neighbouring words that are themselves medical-ish (see ``Lexicon.spread``).
Terms and spreading words are chosen by word statistics of medical versus other text, so the
lexicon does not flag common English words (``build_lexicon``).
"""

from __future__ import annotations

import bisect
import random
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

WORD = re.compile(r"[^\W_]+")  # words: letters and digits; hyphens and apostrophes split words
MAX_TERM_WORDS = 6
MIN_TERM_CHARS = 4
MAX_SPREAD_WORDS = 3  # a match grows by at most this many words on each side
MIN_COUNT = 3  # fewer occurrences than this in a body of text count as "not seen there"
# "common English": at least this many occurrences per million words of general text, unless the
# word is COMMON_UNLESS_RATIO times more frequent in medical text ("disease" is kept, "left" not).
COMMON_PER_MILLION = 10.0
COMMON_UNLESS_RATIO = 10.0
# "medical-ish": at least this many times more frequent in medical than in general+biology text.
MEDICAL_RATIO = 3.0
JOINABLE_GAP = re.compile(r"[\s\-/]*")  # a match or spread never crosses other punctuation

Span = tuple[int, int]


def words_of(text: str) -> list[str]:
    """Lower-cased words, the unit of lexicon matching."""
    return WORD.findall(text.lower())


def count_words(texts: Iterable[str]) -> Counter[str]:
    """Word counts of a body of text (lexicon statistics)."""
    counts: Counter[str] = Counter()
    for text in texts:
        counts.update(words_of(text))
    return counts


@dataclass(frozen=True)
class Lexicon:
    """Term n-grams, their prefixes (for longest-match scanning) and the spreading vocabulary."""

    terms: frozenset[tuple[str, ...]]
    prefixes: frozenset[tuple[str, ...]]
    spread_words: frozenset[str]

    def matches(self, text: str, start: int = 0, end: int | None = None) -> list[Span]:
        """Character spans of lexicon terms in ``text[start:end]``, spread to medical-ish neighbours."""
        end = len(text) if end is None else end
        lowered = text[start:end].lower()
        tokens = [(m.start() + start, m.end() + start, m.group()) for m in WORD.finditer(lowered)]
        spans: list[Span] = []
        i = 0
        floor = 0  # first token not yet inside a span: spreading never reaches back past it
        n = len(tokens)
        while i < n:
            best = -1
            key: tuple[str, ...] = (tokens[i][2],)
            j = i
            while key in self.prefixes:
                if key in self.terms:
                    best = j
                j += 1
                if j >= n or len(key) >= MAX_TERM_WORDS or not self._joinable(text, tokens[j - 1], tokens[j]):
                    break
                key = key + (tokens[j][2],)
            if best < 0:
                i += 1
                continue
            left, right = self.spread(text, tokens, i, best, floor)
            spans.append((tokens[left][0], tokens[right][1]))
            i = floor = right + 1
        return spans

    def spread(self, text: str, tokens: Sequence[tuple[int, int, str]], first: int, last: int,
               floor: int = 0) -> tuple[int, int]:
        """Grow a match over up to MAX_SPREAD_WORDS adjacent words on each side that are medical-ish
        (in ``spread_words``) and separated from it only by spaces, hyphens or slashes."""
        left = first
        while (first - left < MAX_SPREAD_WORDS and left > floor and tokens[left - 1][2] in self.spread_words
               and self._joinable(text, tokens[left - 1], tokens[left])):
            left -= 1
        right = last
        while (right - last < MAX_SPREAD_WORDS and right + 1 < len(tokens)
               and tokens[right + 1][2] in self.spread_words and self._joinable(text, tokens[right], tokens[right + 1])):
            right += 1
        return left, right

    @staticmethod
    def _joinable(text: str, before: tuple[int, int, str], after: tuple[int, int, str]) -> bool:
        return JOINABLE_GAP.fullmatch(text, before[1], after[0]) is not None


def _rate_ratio(word: str, counts: Counter[str], total: int, other: Counter[str], other_total: int) -> float:
    return ((counts[word] + 0.5) / total) / ((other[word] + 0.5) / other_total)


def build_lexicon(terms: Iterable[str], medical_counts: Counter[str], general_counts: Counter[str],
                  biology_counts: Counter[str]) -> Lexicon:
    """Filter raw terms with word statistics of medical, general and biology text.

    A term (1..MAX_TERM_WORDS words, >= MIN_TERM_CHARS characters) is kept when none of its words is
    at least as typical of general+biology text as of medical text, at least one word is medical-ish
    or unseen outside medicine (drug names), and, for a single word, it is not common English.
    Spreading words are the medical-ish, non-common words of the kept terms.
    """
    other_counts = general_counts + biology_counts
    med_total = max(1, sum(medical_counts.values()))
    general_total = max(1, sum(general_counts.values()))
    other_total = max(1, sum(other_counts.values()))

    def ratio(word: str) -> float:
        return _rate_ratio(word, medical_counts, med_total, other_counts, other_total)

    def common(word: str) -> bool:
        return (general_counts[word] >= MIN_COUNT and general_counts[word] * 1e6 / general_total >= COMMON_PER_MILLION
                and _rate_ratio(word, medical_counts, med_total, general_counts, general_total) < COMMON_UNLESS_RATIO)

    def other_typical(word: str) -> bool:
        return other_counts[word] >= MIN_COUNT and ratio(word) <= 1.0

    def medical_ish(word: str) -> bool:
        return (medical_counts[word] >= MIN_COUNT and len(word) >= MIN_TERM_CHARS and ratio(word) >= MEDICAL_RATIO
                and not common(word))

    def unseen_outside(word: str) -> bool:
        return other_counts[word] < MIN_COUNT and len(word) >= MIN_TERM_CHARS and any(c.isalpha() for c in word)

    kept: set[tuple[str, ...]] = set()
    for term in terms:
        words = tuple(words_of(term))
        if not words or len(words) > MAX_TERM_WORDS or len(" ".join(words)) < MIN_TERM_CHARS:
            continue
        if any(other_typical(w) for w in words) or not any(medical_ish(w) or unseen_outside(w) for w in words):
            continue
        if len(words) == 1 and common(words[0]):
            continue
        kept.add(words)
    prefixes = {term[:k] for term in kept for k in range(1, len(term) + 1)}
    spread_words = {w for term in kept for w in term if medical_ish(w)}
    return Lexicon(frozenset(kept), frozenset(prefixes), frozenset(spread_words))


def merge_spans(spans: Iterable[Span], text: str) -> list[list[int]]:
    """Sort and merge overlapping spans, and spans separated only by whitespace."""
    merged: list[list[int]] = []
    for start, end in sorted(spans):
        if start >= end:
            continue
        if merged and (start <= merged[-1][1] or not text[merged[-1][1]:start].strip()):
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    return merged


def label_document(text: str, passages: Sequence[dict], lexicon: Lexicon, forget_domain: str = "medicine") -> list[list[int]]:
    """Weak label spans of one document: forget-domain passages whole, lexicon matches elsewhere."""
    spans: list[Span] = []
    for passage in passages:
        if passage["domain"] == forget_domain:
            spans.append((passage["start"], passage["end"]))
        else:
            spans.extend(lexicon.matches(text, passage["start"], passage["end"]))
    return merge_spans(spans, text)


def flip_label_spans(text: str, spans: Sequence[Sequence[int]], p: float, rng: random.Random) -> list[list[int]]:
    """Label noise for ablations: each word's label is flipped with probability ``p``."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"label noise p must be in [0, 1], got {p}")
    if p == 0.0:
        return [list(s) for s in spans]
    starts = [s for s, _ in spans]
    out: list[Span] = []
    for m in WORD.finditer(text):
        k = bisect.bisect_right(starts, m.start()) - 1
        labelled = k >= 0 and m.start() < spans[k][1]
        if labelled != (rng.random() < p):
            out.append((m.start(), m.end()))
    return merge_spans(out, text)


def spans_are_valid(spans: Sequence[Sequence[int]], length: int) -> bool:
    """True when spans are sorted, non-empty, non-overlapping and inside ``[0, length]``."""
    previous_end = 0
    for start, end in spans:
        if not (previous_end <= start < end <= length):
            return False
        previous_end = end
    return True
