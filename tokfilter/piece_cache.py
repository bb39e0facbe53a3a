"""Batch tokenization with a cache of pre-tokenizer pieces: the tokenizers library's own output, faster.

A BERT tokenizer (BertNormalizer + BertPreTokenizer + WordPiece) and a GPT-2 style byte-level BPE
(ByteLevel pre-tokenizer with its regex, no normalizer) cut a text into pieces first and encode each
piece on its own; where that cut is a regular expression here, each distinct piece is encoded once by
the tokenizer itself and its ids and offsets kept, so a document costs a regex pass and dictionary
lookups instead of the library's per-character bookkeeping.

  * BERT: the normalizer works character by character and the pre-tokenizer splits at every white
    space, so text cut at ASCII white space (each chunk with the white space before it) encodes
    chunk by chunk exactly as whole, in any alphabet.
  * byte-level BPE: GPT-2's regex, on plain ASCII text (printable characters, tab, line feed,
    carriage return), where its letter, digit and space classes are Python's.

Texts outside the alphabet, texts holding an added token's text (which the library matches before
normalizing) and tokenizers of any other configuration go through ``encode_batch`` unchanged.
``tests/test_client_fast.py`` checks the result equals ``encode_batch``'s.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Sequence
from itertools import chain, compress, repeat

import numpy as np
from tokenizers import Tokenizer

from tokfilter.windows import segment_ids, segment_starts, split_segments

# BertPreTokenizer: white space (which it drops) and the chunk up to the next white space
BERT_PIECES = r"[ \t\n\r]*[^ \t\n\r]+|[ \t\n\r]+"
# the ByteLevel pre-tokenizer's regex (GPT-2's) with \p{L} and \p{N} on ASCII, and that alphabet
BYTE_LEVEL_PIECES = r"""'s|'t|'re|'ve|'m|'ll|'d| ?[A-Za-z]+| ?[0-9]+| ?[^\sA-Za-z0-9]+|\s+(?!\S)|\s+"""
OUTSIDE_ASCII = r"[^\t\n\r\x20-\x7e]"
MAX_CACHED_PIECES = 1 << 20


def piece_pattern(tokenizer: Tokenizer) -> tuple[str, str | None] | None:
    """The piece regex of ``tokenizer`` and a regex of the characters outside the alphabet it is
    exact on (None: every text), or None when its configuration is not one whose cut this module
    knows exactly."""
    config = json.loads(tokenizer.to_str())
    normalizer, pre, model = config.get("normalizer"), config.get("pre_tokenizer"), config["model"]
    if (normalizer or {}).get("type") == "BertNormalizer" and normalizer.get("clean_text") \
            and (pre or {}).get("type") == "BertPreTokenizer" and model["type"] == "WordPiece":
        return BERT_PIECES, None
    if normalizer is None and (pre or {}).get("type") == "ByteLevel" and pre.get("use_regex", True) \
            and not pre.get("add_prefix_space") and model["type"] == "BPE" and not model.get("dropout"):
        return BYTE_LEVEL_PIECES, OUTSIDE_ASCII
    return None


class PieceCachedEncoder:
    """``tokenizer.encode_batch(texts, add_special_tokens=False)`` as flat arrays, with the piece
    cache where it is exact (see the module docstring).

    The cache numbers each distinct piece; the tokens of piece ``p`` are rows
    ``starts[p]:starts[p] + counts[p]`` of a table of ids and offsets within the piece."""

    def __init__(self, tokenizer: Tokenizer):
        self.tokenizer = tokenizer
        pieces, outside = piece_pattern(tokenizer) or (None, None)
        self.pieces = re.compile(pieces) if pieces else None
        self.outside = re.compile(outside) if outside else None
        self.added = [(t.content, t.normalized) for t in tokenizer.get_added_tokens_decoder().values()]
        self.lock = threading.Lock()  # pipelines are shared by threads (servers)
        self.clear()

    def clear(self) -> None:
        """Forget every cached piece."""
        self.index: dict[str, int] = {}
        self.counts = self.starts = self.lengths = np.zeros(0, dtype=np.int64)
        self.table = np.zeros((0, 3), dtype=np.int64)  # id, start, end within the piece

    def cacheable(self, text: str) -> bool:
        """Whether the piece cut is exact on ``text``: in the alphabet, no added token's text in it."""
        if self.outside is not None and self.outside.search(text):
            return False
        lower = text.lower() if any(normalized for _, normalized in self.added) else text
        return not any(content.lower() in lower if normalized else content in text for content, normalized in self.added)

    def encode(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Token ids, code-point offsets [N, 2] of all texts' tokens (each text's own), and each
        text's token count."""
        if self.pieces is None:
            return encode_batch_arrays(self.tokenizer, texts)
        cached = [self.cacheable(t) for t in texts]
        if all(cached):
            return self._encode_cached(texts)
        fast = per_text(*self._encode_cached(list(compress(texts, cached))))
        slow = per_text(*encode_batch_arrays(self.tokenizer, [t for t, c in zip(texts, cached) if not c]))
        ids, offsets = zip(*(next(fast) if c else next(slow) for c in cached))
        counts = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
        return np.concatenate(ids), np.concatenate(offsets), counts

    def _piece_rows(self, pieces: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Each piece's length, token count and first row in the table, and the table, encoding
        (with the tokenizer) the pieces the cache lacks."""
        with self.lock:
            numbers = self._piece_numbers(pieces)
            return self.lengths[numbers], self.counts[numbers], self.starts[numbers], self.table

    def _piece_numbers(self, pieces: list[str]) -> np.ndarray:
        numbers = np.fromiter(map(self.index.get, pieces, repeat(-1)), dtype=np.int64, count=len(pieces))
        if (numbers >= 0).all():
            return numbers
        missing = sorted({pieces[i] for i in np.flatnonzero(numbers < 0).tolist()})
        if len(self.index) + len(missing) > MAX_CACHED_PIECES:
            self.clear()
            missing = sorted(set(pieces))
        ids, offsets, counts = self._encode_pieces(missing)
        self.index.update(zip(missing, range(len(self.index), len(self.index) + len(missing))))
        self.counts = np.concatenate([self.counts, counts])
        self.lengths = np.concatenate([self.lengths, np.fromiter(map(len, missing), dtype=np.int64, count=len(missing))])
        self.table = np.concatenate([self.table, np.column_stack([ids, offsets])])
        self.starts = segment_starts(self.counts)
        return np.fromiter(map(self.index.__getitem__, pieces), dtype=np.int64, count=len(pieces))

    def _encode_pieces(self, pieces: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Ids, offsets within the piece and token count of each piece. BERT pieces are a word or
        one punctuation character (after white space), or white space: with a space between them
        each stays its own word, so they go as one text (one call instead of one per piece);
        byte-level ones one text each."""
        if self.pieces.pattern != BERT_PIECES:
            return encode_batch_arrays(self.tokenizer, pieces)
        ids, offsets, _ = encode_batch_arrays(self.tokenizer, [" ".join(pieces)])
        lengths = np.fromiter(map(len, pieces), dtype=np.int64, count=len(pieces))
        starts = segment_starts(lengths + 1)  # where each piece starts in the joined text
        piece = np.searchsorted(starts, offsets[:, 0], side="right") - 1
        return ids, offsets - starts[piece][:, None], np.bincount(piece, minlength=len(pieces)).astype(np.int64)

    def _encode_cached(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        piece_lists = [self.pieces.findall(t) for t in texts]
        pieces = list(chain.from_iterable(piece_lists))
        piece_lengths, tokens_per_piece, first_rows, table = self._piece_rows(pieces)
        rows = table[np.repeat(first_rows - segment_starts(tokens_per_piece), tokens_per_piece)
                     + np.arange(int(tokens_per_piece.sum()))]
        # pieces tile each text: a piece starts where the text's earlier pieces end
        text_of_piece = segment_ids(np.fromiter(map(len, piece_lists), dtype=np.int64, count=len(piece_lists)))
        text_starts = segment_starts(np.fromiter(map(len, texts), dtype=np.int64, count=len(texts)))
        piece_starts = segment_starts(piece_lengths) - text_starts[text_of_piece]
        offsets = rows[:, 1:] + np.repeat(piece_starts, tokens_per_piece)[:, None]
        counts = np.bincount(np.repeat(text_of_piece, tokens_per_piece), minlength=len(texts)).astype(np.int64)
        return rows[:, 0].copy(), offsets, counts


def per_text(ids: np.ndarray, offsets: np.ndarray, counts: np.ndarray):
    """Each text's (ids, offsets) from the flat arrays."""
    return zip(split_segments(ids, counts), split_segments(offsets, counts))


def encode_batch_arrays(tokenizer: Tokenizer, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``encode_batch`` (no special tokens) read into flat arrays: ids, offsets [N, 2], counts per text."""
    encodings = tokenizer.encode_batch(list(texts), add_special_tokens=False)
    counts = np.fromiter(map(len, encodings), dtype=np.int64, count=len(encodings))
    total = int(counts.sum())
    ids = np.fromiter(chain.from_iterable(e.ids for e in encodings), dtype=np.int64, count=total)
    offsets = np.fromiter(chain.from_iterable(chain.from_iterable(e.offsets for e in encodings)), dtype=np.int64,
                          count=2 * total).reshape(-1, 2)
    return ids, offsets, counts
