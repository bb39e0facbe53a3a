"""Projection of character probabilities onto target tokenizers (tokenizer.json and .tiktoken)."""

import base64

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tokfilter.clients.projection import TargetTokenizer, owned_spans, project
from tokfilter.errors import TokfilterError
from tokfilter.training.pretrain.tokenizer import train_target_tokenizer

TEXTS = ["The patient was given insulin for diabetes.", "Cells divide by mitosis; the genome is copied.",
         "naïve café — 😀 emoji and ünïcödé text", "  leading spaces\tand\ttabs\n\nnew lines  "] * 20


@pytest.fixture(scope="module")
def hf_tokenizer(tmp_path_factory):
    path = train_target_tokenizer(TEXTS, tmp_path_factory.mktemp("tok") / "tokenizer.json", vocab_size=320)
    return TargetTokenizer(path)


@pytest.fixture(scope="module")
def tiktoken_tokenizer(tmp_path_factory):
    merges = [bytes([b]) for b in range(256)] + [b"th", b"the", b" the", b"in", b"ing", b"\xc3\xa9", b" \xf0\x9f"]
    path = tmp_path_factory.mktemp("tt") / "tiny.tiktoken"
    path.write_text("".join(f"{base64.b64encode(m).decode()} {r}\n" for r, m in enumerate(merges)))
    return TargetTokenizer(path)


def test_worked_example_of_docs():
    # text "a cold day": tokens "a", " cold", " day" with offsets trimmed of their leading space
    char_probs = np.array([0.1, 0.3, 0.9, 0.8, 0.9, 0.9, 0.2, 0.1, 0.1, 0.1], dtype=np.float32)
    starts, ends = np.array([0, 2, 7]), np.array([1, 6, 10])
    assert owned_spans(starts, ends, 10)[0].tolist() == [0, 1, 6]
    assert project(char_probs, starts, ends).tolist() == pytest.approx([0.1, 0.9, 0.2])


@pytest.mark.parametrize("kind", ["hf", "tiktoken"])
@settings(max_examples=60, deadline=None)
@given(text=st.text(max_size=60))
def test_every_character_is_owned_by_a_token(request, kind, text):
    tok = request.getfixturevalue(f"{kind}_tokenizer")
    (enc,) = tok.encode([text])
    lo, hi = owned_spans(enc.starts, enc.ends, len(text))
    owned = np.zeros(len(text), dtype=int)
    for a, b in zip(lo, hi):
        owned[a:b] += 1
    assert (owned >= 1).all()
    assert ((enc.starts >= 0) & (enc.ends <= len(text)) & (enc.starts <= enc.ends)).all()


@pytest.mark.parametrize("kind", ["hf", "tiktoken"])
@settings(max_examples=60, deadline=None)
@given(text=st.text(max_size=60), seed=st.integers(0, 1000), t1=st.floats(0, 1), t2=st.floats(0, 1))
def test_higher_threshold_never_flags_more_and_flagged_chars_flag_their_token(request, kind, text, seed, t1, t2):
    tok = request.getfixturevalue(f"{kind}_tokenizer")
    (enc,) = tok.encode([text])
    char_probs = np.random.default_rng(seed).random(len(text)).astype(np.float32)
    probs = project(char_probs, enc.starts, enc.ends)
    lo_t, hi_t = sorted((t1, t2))
    assert ((probs >= hi_t) <= (probs >= lo_t)).all()
    for p, s, e in zip(probs, enc.starts, enc.ends):
        if e > s:
            assert p >= char_probs[s:e].max()
    # no flagged character escapes: the max over all tokens is the max over all characters
    if len(text) and len(probs):
        assert probs.max() == pytest.approx(char_probs.max())


def test_tokenizers_have_the_special_tokens(hf_tokenizer, tiktoken_tokenizer):
    for tok in (hf_tokenizer, tiktoken_tokenizer):
        assert tok.eot_id is not None and tok.hidden_id is not None and tok.eot_id != tok.hidden_id
        assert tok.metadata()["vocab_size"] == tok.vocab_size
    assert hf_tokenizer.vocab_size == 320


def test_unknown_tokenizer_file_is_a_clear_error(tmp_path):
    with pytest.raises(TokfilterError, match="not found"):
        TargetTokenizer(tmp_path / "missing.json")
    (tmp_path / "vocab.txt").write_text("x")
    with pytest.raises(TokfilterError, match="--target-tokenizer must be"):
        TargetTokenizer(tmp_path / "vocab.txt")


def test_train_tokenizer_cli(tiny_corpus_dir, tmp_path):
    from tokfilter.cli import main

    out = tmp_path / "tok" / "tokenizer.json"
    assert main(["train-tokenizer", str(tiny_corpus_dir / "test.jsonl"), "--out", str(out), "--vocab-size", "300"]) == 0
    tok = TargetTokenizer(out)
    assert tok.vocab_size == 300 and (tok.eot_id, tok.hidden_id) == (0, 1)
    text = "Insulin 😀 naïve"
    (enc,) = tok.encode([text])
    assert tok._hf.decode(enc.ids.tolist()) == text  # byte-level: any text round-trips
    assert main(["train-tokenizer", str(tiny_corpus_dir / "test.jsonl"), "--out", str(out), "--vocab-size", "10"]) == 2


@pytest.mark.parametrize("kind", ["hf", "tiktoken"])
@settings(max_examples=60, deadline=None)
@given(text=st.text(max_size=60))
def test_token_bytes_join_to_the_text(request, kind, text):
    """A token's bytes (what `tokfilter inspect` shows) concatenate back to the encoded text."""
    tok = request.getfixturevalue(f"{kind}_tokenizer")
    (enc,) = tok.encode([text])
    joined = b"".join(tok.token_bytes(int(i)) for i in enc.ids)
    assert joined == text.encode("utf-8", "replace")
    assert tok.token_bytes(tok.hidden_id) == b"[hidden]" and tok.token_bytes(tok.eot_id) == b"<|endoftext|>"
