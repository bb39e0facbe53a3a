"""Projection of the classifier's per-character probabilities onto the training (target) tokenizer.

Rule (docs/shards.md has a worked example): every target token owns a character span, and the
spans of a document's tokens tile its text: a token's own characters (for a byte-level token that
holds part of a multi-byte character, the whole character), plus the uncovered characters just
before it (white space a tokenizer trims from its offsets), plus, for the last token, everything
after it. A token with an empty span owns the character at its position. The token's probability is
the highest character probability (``tokfilter.windows.char_probabilities``) over its span, so a
target token that overlaps a flagged classifier token is flagged.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import chain
from pathlib import Path
from typing import Sequence

import numpy as np

from tokfilter.digest import file_sha256
from tokfilter.errors import TokfilterError
from tokfilter.scoring import HIDDEN_TOKEN, safe_text
from tokfilter.windows import segment_ids, segment_starts, split_segments

EOT_TOKEN = "<|endoftext|>"
# cl100k's split pattern: .tiktoken files hold only the merges, not the pattern
TIKTOKEN_PATTERN = r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+|\s++$|\s*[\r\n]|\s+(?!\S)|\s"""


def byte_level_alphabet() -> dict[str, int]:
    """GPT-2's byte-level BPE spelling (the ``tokenizers`` ByteLevel one): the character that stands
    for each byte in a token's string, inverted to character -> byte."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in printable]
    chars = printable + [256 + n for n in range(len(others))]
    return {chr(c): b for b, c in zip(printable + others, chars)}


BYTE_LEVEL_BYTES = byte_level_alphabet()


def owned_spans(starts: np.ndarray, ends: np.ndarray, n_chars: int) -> tuple[np.ndarray, np.ndarray]:
    """Half-open character spans ``[lo, hi)`` each token owns under the projection rule."""
    starts = np.asarray(starts, dtype=np.int64)
    ends = np.asarray(ends, dtype=np.int64)
    if len(starts) == 0:
        return starts, ends
    prev_end = np.concatenate([[0], np.maximum.accumulate(ends)[:-1]])
    lo = np.minimum(starts, prev_end)
    hi = np.maximum(ends, lo + 1)
    hi[-1] = max(hi[-1], n_chars)
    return np.clip(lo, 0, n_chars), np.clip(hi, 0, n_chars)


def project(char_probs: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Probability of each target token: the max character probability over its owned span."""
    n_chars = len(char_probs)
    lo, hi = owned_spans(starts, ends, n_chars)
    if len(lo) == 0:
        return np.zeros(0, dtype=np.float32)
    padded = np.append(np.asarray(char_probs, dtype=np.float32), np.float32(0))  # reduceat needs idx < len
    bounds = np.stack([lo, hi], axis=1).ravel()
    maxima = np.maximum.reduceat(padded, bounds)[::2]
    return np.where(hi > lo, maxima, np.float32(0)).astype(np.float32)


def project_batch(char_probs: Sequence[np.ndarray], encodings: Sequence["TargetEncoding"]) -> list[np.ndarray]:
    """``project`` of every document of a buffer in one pass over their concatenated characters and
    tokens (a document's spans never reach into the next: its last token owns up to its own end)."""
    char_counts = np.fromiter(map(len, char_probs), dtype=np.int64, count=len(char_probs))
    token_counts = np.fromiter((len(e.ids) for e in encodings), dtype=np.int64, count=len(encodings))
    if len(char_counts) != len(token_counts):
        raise ValueError(f"{len(char_counts)} documents of character probabilities but {len(token_counts)} encodings")
    char_starts, token_starts = segment_starts(char_counts), segment_starts(token_counts)
    doc = segment_ids(token_counts)
    base, n_chars = char_starts[doc], char_counts[doc]
    starts = np.concatenate([np.zeros(0, np.int64), *(e.starts for e in encodings)]) + base
    ends = np.concatenate([np.zeros(0, np.int64), *(e.ends for e in encodings)]) + base
    # owned_spans per document: documents' characters follow each other, so a running max of the
    # ends never carries one document's into the next past its first token, set to its start
    prev_end = np.empty_like(ends)
    prev_end[1:] = np.maximum.accumulate(ends)[:-1]
    prev_end[token_starts[token_counts > 0]] = char_starts[token_counts > 0]
    lo = np.minimum(starts, prev_end)
    hi = np.maximum(ends, lo + 1)
    last = (token_starts + token_counts - 1)[token_counts > 0]
    hi[last] = np.maximum(hi[last], base[last] + n_chars[last])
    lo, hi = np.clip(lo, base, base + n_chars), np.clip(hi, base, base + n_chars)
    flat = np.concatenate([np.zeros(0, np.float32), *char_probs]).astype(np.float32)
    padded = np.append(flat, np.float32(0))  # reduceat needs idx < len
    maxima = np.maximum.reduceat(padded, np.stack([lo, hi], axis=1).ravel())[::2] if len(lo) else lo
    probs = np.where(hi > lo, maxima, np.float32(0)).astype(np.float32)
    return split_segments(probs, token_counts)


def reference_project_batch(char_probs: Sequence[np.ndarray], encodings: Sequence["TargetEncoding"]) -> list[np.ndarray]:
    """``project_batch`` one document at a time: the baseline of its tests and benchmark."""
    return [project(c, e.starts, e.ends) for c, e in zip(char_probs, encodings, strict=True)]


def _code_point_byte_starts(text: str) -> np.ndarray:
    """UTF-8 byte offset at which each code point of ``text`` starts, plus the total length."""
    cps = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
    sizes = 1 + (cps >= 0x80).astype(np.int64) + (cps >= 0x800) + (cps >= 0x10000)
    return np.concatenate([[0], np.cumsum(sizes)])


@dataclass(frozen=True)
class TargetEncoding:
    """Target token ids of a text and each token's code-point span ``[starts, ends)``."""

    ids: np.ndarray
    starts: np.ndarray
    ends: np.ndarray


class TargetTokenizer:
    """The tokenizer the pretraining uses: a ``tokenizer.json`` or a ``.tiktoken`` BPE file.

    ``eot_id`` separates documents in shards; ``hidden_id`` (``[hidden]``) replaces flagged tokens in
    ``remove`` mode (``None`` when the vocabulary has no such token).
    """

    def __init__(self, path: Path | str):
        self.path = Path(path)
        if not self.path.is_file():
            raise TokfilterError(f"target tokenizer not found: {self.path} (run `tokfilter train-tokenizer`)")
        self.sha256 = file_sha256(self.path)
        if self.path.suffix == ".tiktoken":
            self._init_tiktoken()
        elif self.path.suffix == ".json":
            self._init_hf()
        else:
            raise TokfilterError(f"--target-tokenizer must be a tokenizer.json or a .tiktoken file, got {self.path}")

    def _init_hf(self) -> None:
        from tokenizers import decoders

        from tokfilter.piece_cache import PieceCachedEncoder
        from tokfilter.windows import load_tokenizer

        self.kind = "tokenizers"
        self._hf = load_tokenizer(self.path)
        self._encoder = PieceCachedEncoder(self._hf)
        self._byte_level = isinstance(self._hf.decoder, decoders.ByteLevel)
        self._added = {i: t.content for i, t in self._hf.get_added_tokens_decoder().items()}
        self.vocab_size = self._hf.get_vocab_size()
        self.eot_id = self._hf.token_to_id(EOT_TOKEN)
        self.hidden_id = self._hf.token_to_id(HIDDEN_TOKEN)
        if self.eot_id is None:
            raise TokfilterError(f"target tokenizer {self.path} has no {EOT_TOKEN} token (needed between documents)")

    def _init_tiktoken(self) -> None:
        import tiktoken
        from tiktoken.load import load_tiktoken_bpe

        self.kind = "tiktoken"
        ranks = load_tiktoken_bpe(str(self.path))
        n = len(ranks)
        self._tt = tiktoken.Encoding(
            name=self.path.stem, pat_str=TIKTOKEN_PATTERN, mergeable_ranks=ranks,
            special_tokens={EOT_TOKEN: n, HIDDEN_TOKEN: n + 1},
        )
        self.vocab_size = n + 2
        self.eot_id, self.hidden_id = n, n + 1
        self._byte_lengths = np.zeros(n, dtype=np.int64)
        for token_bytes, rank in ranks.items():
            self._byte_lengths[rank] = len(token_bytes)

    def metadata(self) -> dict:
        return {"path": str(self.path), "sha256": self.sha256, "kind": self.kind, "vocab_size": self.vocab_size,
                "eot_id": self.eot_id, "hidden_id": self.hidden_id}

    def token_bytes(self, token_id: int) -> bytes:
        """The UTF-8 bytes a token stands for (a special token: its text). A byte-level token may
        hold part of a character; a token of any other ``tokenizer.json`` is decoded alone."""
        if self.kind == "tiktoken":
            return self._tt.decode_single_token_bytes(token_id)
        if token_id in self._added:
            return self._added[token_id].encode()
        if self._byte_level:
            return bytes(BYTE_LEVEL_BYTES[c] for c in self._hf.id_to_token(token_id))
        return self._hf.decode([token_id]).encode()

    def encode(self, texts: Sequence[str]) -> list[TargetEncoding]:
        """Ids and code-point spans of each text's tokens, read into flat arrays for the whole batch."""
        texts = [safe_text(t) for t in texts]
        if self.kind == "tiktoken":
            return self._encode_tiktoken_batch(texts)
        ids, offsets, counts = self._encoder.encode(texts)
        return split_encodings(ids, offsets[:, 0], offsets[:, 1], counts)

    def _encode_tiktoken_batch(self, texts: list[str]) -> list[TargetEncoding]:
        """``_encode_tiktoken`` of every text, with the byte-to-character mapping done once on the
        texts joined (a token never spans two texts, so its characters are its own text's)."""
        token_lists = [self._tt.encode_ordinary(t) for t in texts]
        counts = np.fromiter(map(len, token_lists), dtype=np.int64, count=len(token_lists))
        ids = np.fromiter(chain.from_iterable(token_lists), dtype=np.int64, count=int(counts.sum()))
        cp_starts = _code_point_byte_starts("".join(texts))
        char_starts = segment_starts(np.fromiter(map(len, texts), dtype=np.int64, count=len(texts)))
        base = char_starts[segment_ids(counts)]
        byte_ends = np.cumsum(self._byte_lengths[ids])  # tokens of consecutive texts tile the joined bytes
        byte_starts = byte_ends - self._byte_lengths[ids]
        starts = np.searchsorted(cp_starts, byte_starts, side="right") - 1 - base
        ends = np.searchsorted(cp_starts, byte_ends, side="left") - base
        return split_encodings(ids, starts, ends, counts)

    def reference_encode(self, texts: Sequence[str]) -> list[TargetEncoding]:
        """``encode`` one text at a time: the baseline of its tests and benchmark."""
        texts = [safe_text(t) for t in texts]
        if self.kind == "tiktoken":
            return [self._encode_tiktoken(t) for t in texts]
        out = []
        for enc in self._hf.encode_batch(texts, add_special_tokens=False):
            offsets = np.asarray(enc.offsets, dtype=np.int64).reshape(-1, 2)
            out.append(TargetEncoding(np.asarray(enc.ids, dtype=np.int64), offsets[:, 0], offsets[:, 1]))
        return out

    def _encode_tiktoken(self, text: str) -> TargetEncoding:
        ids = np.asarray(self._tt.encode_ordinary(text), dtype=np.int64)
        byte_ends = np.cumsum(self._byte_lengths[ids])
        byte_starts = byte_ends - self._byte_lengths[ids]
        cp_starts = _code_point_byte_starts(text)
        # a token starting inside a character owns that character; one ending inside it, too
        starts = np.searchsorted(cp_starts, byte_starts, side="right") - 1
        ends = np.searchsorted(cp_starts, byte_ends, side="left")
        return TargetEncoding(ids, starts, ends)


def split_encodings(ids: np.ndarray, starts: np.ndarray, ends: np.ndarray, counts: np.ndarray) -> list[TargetEncoding]:
    """Per-text ``TargetEncoding`` views of a batch's flat ids and spans (``counts`` tokens each)."""
    return [TargetEncoding(*parts) for parts in zip(*(split_segments(a, counts) for a in (ids, starts, ends)))]
