"""``tokfilter inspect``: shard documents in the training tokenizer's tokens, with exactly the tokens
MaskedShards masks (or hides) marked."""

import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tokfilter.cli import main as cli
from tokfilter.clients import MaskedShards
from tokfilter.clients.projection import TargetTokenizer
from tokfilter.clients.shards.inspect import PLAIN_BETWEEN, PLAIN_CLOSE, PLAIN_OPEN, render, token_pieces
from tokfilter.clients.shards.writer import ShardWriter
from tokfilter.scoring import HIDDEN_TOKEN
from tokfilter.training.pretrain.tokenizer import train_target_tokenizer
from tokfilter.windows import load_tokenizer

TEXTS = {
    "bio": "Mitochondria make ATP; ribosomes build proteins in the cell.",
    "med": "The patient took 500 mg of metformin for diabetes. Naïve café 😀 notes.",
    "empty": "",
}
FLAGGED_WORDS = ("patient", "metformin", "diabetes", "café 😀")
THRESHOLD = 0.5
ANSI = re.compile(r"\x1b\[[0-9;]*m")


@pytest.fixture(scope="module")
def target(tmp_path_factory) -> TargetTokenizer:
    path = train_target_tokenizer(list(TEXTS.values()) * 20, tmp_path_factory.mktemp("tok") / "tokenizer.json", vocab_size=300)
    return TargetTokenizer(path)


def word_probs(text: str, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """0.9 for tokens overlapping a flagged word, 0.5 exactly (the threshold: flagged) for none, 0.2 else."""
    probs = np.full(len(starts), 0.2, dtype=np.float32)
    for word in FLAGGED_WORDS:
        at = text.find(word)
        if at >= 0:
            probs[(starts < at + len(word)) & (ends > at)] = 0.9
    if len(probs) > 2:
        probs[1] = 0.5
    return probs


@pytest.fixture(scope="module")
def shard_dir(target, tmp_path_factory):
    out = tmp_path_factory.mktemp("shards")
    manifest = {"format": "tokfilter-shards", "version": 1, "dtype": "uint16", "eot_id": target.eot_id,
                "hidden_id": target.hidden_id, "threshold": THRESHOLD, "target_tokenizer": target.metadata(),
                "inputs": [{"path": "x", "records_read": 0}]}
    writer = ShardWriter(out, manifest, shard_tokens=20)
    for i, (doc_id, text) in enumerate(TEXTS.items()):
        (enc,) = target.encode([text])
        writer.add(doc_id, enc.ids, word_probs(text, enc.starts, enc.ends), 0.9 if doc_id == "med" else 0.1)
        writer.advance(0, i + 1)
        writer.flush_if_full()
    writer.close()
    return out


def inspect(capsys, *args) -> tuple[int, str, str]:
    rc = cli(["inspect", *map(str, args)])
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def test_mask_mode_marks_exactly_the_tokens_the_loss_skips(capsys, shard_dir, target):
    rc, out, _ = inspect(capsys, shard_dir, "--doc", "med", "--color", "never")
    assert rc == 0
    header, body = out.splitlines()[0], out.splitlines()[1]
    (enc,) = target.encode([TEXTS["med"]])
    probs = word_probs(TEXTS["med"], enc.starts, enc.ends)
    expected_flags = probs >= np.float32(THRESHOLD)
    assert f"{len(enc.ids)} tokens · {int(expected_flags.sum())} masked" in header and "med" in header
    # MaskedShards' view of the same document: the mask on the targets of the stream
    data = MaskedShards(shard_dir, seq_len=1, threshold=THRESHOLD, mode="mask")
    weights = np.array([float(data.sample(k)[2][0]) for k in range(data.num_samples)])
    start = len(target.encode([TEXTS["bio"]])[0].ids) + 1  # "bio" and its end-of-text token come first
    assert ((weights[start - 1 : start - 1 + len(enc.ids)] == 0) == expected_flags).all()
    # the marked pieces are the flagged tokens, in order; without the markers the text is intact
    marked = [piece for run in re.findall(r"\[\[(.*?)\]\]", body) for piece in run.split(PLAIN_BETWEEN)]
    pieces = token_pieces(target, enc.ids)
    assert marked == [p for p, f in zip(pieces, expected_flags) if f]
    assert body.replace(PLAIN_OPEN, "").replace(PLAIN_CLOSE, "").replace(PLAIN_BETWEEN, "") == TEXTS["med"]
    for word in FLAGGED_WORDS:
        assert word in "".join(marked)
    assert "dropped in document mode" in header  # document score 0.9 >= 0.5


def test_remove_mode_shows_the_ids_the_model_reads(capsys, shard_dir, target):
    rc, out, _ = inspect(capsys, shard_dir, "--doc", "med", "--mode", "remove", "--color", "never")
    assert rc == 0
    (enc,) = target.encode([TEXTS["med"]])
    data = MaskedShards(shard_dir, seq_len=1, threshold=THRESHOLD, mode="remove")
    start = len(target.encode([TEXTS["bio"]])[0].ids) + 1
    read = [int(data.sample(k)[0][0]) for k in range(start, start + len(enc.ids))]
    # decoded independently: runs of kept ids through the tokenizer's own decoder, [hidden] for the rest
    tokenizer = load_tokenizer(target.path)
    expected, run = [], []
    for i in read + [None]:
        if i is None or i == target.hidden_id:
            expected.append(tokenizer.decode(run))
            run = []
            if i is not None:
                expected.append(HIDDEN_TOKEN)
        else:
            run.append(i)
    assert out.splitlines()[1] == "".join(expected)
    assert HIDDEN_TOKEN in out and "metformin" not in out.splitlines()[1]


def test_colour_on_a_terminal_and_plain_markers_elsewhere(capsys, shard_dir):
    _, coloured, _ = inspect(capsys, shard_dir, "--doc", "med", "--color", "always")
    assert "\x1b[" in coloured
    assert ANSI.sub("", coloured.splitlines()[1]) == TEXTS["med"]
    _, plain, _ = inspect(capsys, shard_dir, "--doc", "med")  # captured stdout is not a terminal
    assert "\x1b[" not in plain and PLAIN_OPEN in plain


def test_default_documents_threshold_and_empty_documents(capsys, shard_dir):
    rc, out, _ = inspect(capsys, shard_dir, "--limit", "3", "--threshold", "0.95")
    assert rc == 0
    headers = [line for line in out.splitlines() if line.startswith("──")]
    assert [h.split(" · ")[0] for h in headers] == ["── bio", "── med", "── empty"]
    assert all(" 0 masked" in h for h in headers) and PLAIN_OPEN not in out  # 0.95: nothing flagged
    assert "dropped in document mode" not in headers[2]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--doc", "nope"], "--doc 'nope' is not in"),
        (["--threshold", "1.5"], "--threshold must be in [0, 1]"),
        (["--limit", "0"], "--limit must be >= 1"),
    ],
)
def test_bad_arguments_are_clear_errors(capsys, shard_dir, args, message):
    rc, _, err = inspect(capsys, shard_dir, *args)
    assert rc == 2 and message in err and "Traceback" not in err


def test_wrong_tokenizer_and_missing_shards_are_clear_errors(capsys, shard_dir, tmp_path):
    other = train_target_tokenizer(["something else entirely"] * 5, tmp_path / "other.json", vocab_size=280)
    rc, _, err = inspect(capsys, shard_dir, "--target-tokenizer", other)
    assert rc == 2 and "is not the tokenizer" in err
    rc, _, err = inspect(capsys, tmp_path)
    assert rc == 2 and "not a shard directory" in err


@settings(max_examples=100, deadline=None)
@given(pieces=st.lists(st.text(alphabet=st.characters(blacklist_characters="[]|"), max_size=4), max_size=12),
       seed=st.integers(0, 2**16))
def test_plain_rendering_keeps_the_text_and_marks_each_flagged_run(pieces, seed):
    flagged = np.random.default_rng(seed).random(len(pieces)) < 0.4
    shown = render(pieces, flagged, "mask", color=False)
    assert shown.replace(PLAIN_OPEN, "").replace(PLAIN_CLOSE, "").replace(PLAIN_BETWEEN, "") == "".join(pieces)
    runs = int(np.sum(np.diff(np.concatenate([[0], flagged.astype(int)])) == 1))
    assert shown.count(PLAIN_OPEN) == shown.count(PLAIN_CLOSE) == runs
    assert render(pieces, flagged, "remove", color=False).count(HIDDEN_TOKEN) == int(flagged.sum())
