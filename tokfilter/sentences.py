"""Sentence spans of prose: a small regex splitter shared by the corpus builder and the benchmarks.

A sentence ends at ``.``, ``!`` or ``?`` (with any closing quotes or brackets) followed by white
space and a capital letter, a digit or an opening quote or bracket, unless the word before the stop
is a known abbreviation ("Dr.", "vs.", "et al.") or a single letter (an initial, "e.g.", "U.S.").
A blank line always ends a sentence. Good enough to cut and splice prose; not a linguistic parser.
"""

from __future__ import annotations

import re

_BLOCK = re.compile(r"\S(?:.*?\S)?(?=\s*\n\s*\n|\s*$)", re.DOTALL)  # text between blank lines, trimmed
_STOP = re.compile(r"[.!?]+[\"'”’)\]]*(?=\s+[\"'“‘(\[]?[A-Z0-9])")
_NON_SPACE = re.compile(r"\S")
_WORD_BEFORE = re.compile(r"([^\W\d_]+)\W*$")
ABBREVIATIONS = frozenset({
    "al", "approx", "ca", "cf", "dr", "etc", "fig", "figs", "inc", "jr", "ltd", "mr", "mrs", "ms", "mt", "no", "nos",
    "prof", "sr", "st", "vol", "vs",
})

Span = tuple[int, int]


def sentence_spans(text: str) -> list[Span]:
    """Half-open ``[start, end)`` spans of the sentences of ``text``: sorted, disjoint, each starting
    and ending on a non-space character; every non-space character lies in exactly one span."""
    spans: list[Span] = []
    for block in _BLOCK.finditer(text):
        start = block.start()
        for stop in _STOP.finditer(text, block.start(), block.end()):
            word = _WORD_BEFORE.search(text, start, stop.start() + 1)
            if word and stop.group().startswith(".") and (len(word.group(1)) == 1 or word.group(1).lower() in ABBREVIATIONS):
                continue
            spans.append((start, stop.end()))
            start = _NON_SPACE.search(text, stop.end()).start()
        spans.append((start, block.end()))
    return spans


def split_sentences(text: str) -> list[str]:
    """The sentences of ``text`` (see ``sentence_spans``)."""
    return [text[s:e] for s, e in sentence_spans(text)]
