"""benchmarks/real_text.py on a small real-text folder written here (the shared data is not needed):
the mixed-document builder, the metrics and the misses it writes, and its exit without data."""

import json
import subprocess
import sys
from pathlib import Path

from hypothesis import given, settings, strategies as st

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from real_text import (INSERTED_WORDS, MISSES_SHOWN, SEEN_NGRAM_WORDS, MixedDocument, Passage, build_mixed_documents,  # noqa: E402
                       drop_seen_passages, load_sentence_labels, markdown, medical_sentences, sentence_id,
                       sentence_labelled_metrics, unseen_mixed_documents)

from tokfilter.scoring import DocumentScores  # noqa: E402

MED = ("Metformin lowers fasting blood glucose in adults with type 2 diabetes mellitus.",
       "Patients with chronic kidney disease should have their dose of the drug reduced.",
       "The randomized trial enrolled children with asthma who used inhaled corticosteroids daily.")
BIO = ("The cell membrane is a lipid bilayer that separates the cytoplasm from the outside.",
       "Chloroplasts capture light energy and convert it into chemical energy in plants.",
       "Mitochondria have their own circular genome inherited from the mother.")
GENERAL = ("The river flooded the valley after three weeks of heavy autumn rain.",
           "The museum reopened its east wing with a collection of medieval maps.",
           "Trains between the two cities now run every half hour on weekdays.")


def words(n: int) -> str:
    """A sentence of ``n`` words (capitalised: the splitter starts sentences at capitals)."""
    return " ".join(["Word0"] + [f"word{i}" for i in range(1, n)]) + "."


@settings(max_examples=60, deadline=None)
@given(n_hosts=st.integers(1, 6), host_sentences=st.integers(1, 5), med_words=st.integers(1, 80), seed=st.integers(0, 50))
def test_mixed_document_spans_are_the_inserted_medical_sentences(n_hosts, host_sentences, med_words, seed):
    med = Passage("m", "med", " ".join([MED[0], MED[1], words(med_words)]))
    hosts = [Passage(f"h{i}", "bio" if i % 2 else "general", " ".join((BIO if i % 2 else GENERAL)[j % 3] for j in range(host_sentences)))
             for i in range(n_hosts)]
    allowed = {sentence for _, sentence in medical_sentences([med])}
    assert (words(med_words) in allowed) == (INSERTED_WORDS[0] <= med_words <= INSERTED_WORDS[1])
    docs = build_mixed_documents([med, *hosts], seed)
    assert len(docs) == n_hosts
    for doc, host in zip(docs, hosts):
        assert 1 <= len(doc.inserted) <= 2 and doc.host_domain == host.domain
        assert doc.host_id == host.id and doc.inserted_from == ("m",) * len(doc.inserted)
        assert all(doc.text[s:e] in allowed for s, e in doc.inserted)
        rest, last = [], 0
        for s, e in doc.inserted:
            rest.append(doc.text[last:s])
            last = e
        rest.append(doc.text[last:])
        assert " ".join(" ".join(rest).split()) == " ".join(host.text.split())  # the host's sentences, in order


def word_scores(text: str, flagged: list[tuple[int, int]]) -> DocumentScores:
    """A document scored word by word: probability 1 for the words inside ``flagged`` spans, else 0."""
    offsets, start = [], 0
    for word in text.split(" "):
        offsets.append((start, start + len(word)))
        start += len(word) + 1
    offsets = np.array(offsets, dtype=np.int64)
    probs = np.array([float(any(s <= a < e for s, e in flagged)) for a, _ in offsets], dtype=np.float32)
    return DocumentScores(None, np.arange(len(offsets)), offsets, probs, np.zeros(len(text), np.float32), [], 0.5)


def test_sentence_labels_leave_the_non_medicine_insertions_out_of_the_token_metrics():
    host, med, remark = BIO[0], MED[0], "However, this is still a matter of some controversy."
    text = " ".join([host, med, remark])
    med_span = (len(host) + 1, len(host) + 1 + len(med))
    remark_span = (med_span[1] + 1, len(text))
    doc = MixedDocument(text, "bio", (med_span, remark_span))
    labels = {sentence_id(med): "medicine", sentence_id(remark): "not_medicine"}
    alone = [word_scores(med, [(0, len(med))]), word_scores(remark, [])]
    exact = sentence_labelled_metrics([doc], [word_scores(text, [med_span])], alone, labels, 0.5)
    # a model that flags just the medical sentence: perfect with the sentence labels (with the passage
    # labels the remark would be a miss)
    assert exact["available"] and exact["inserted_sentences"] == {"medicine": 1, "borderline": 0, "not_medicine": 1}
    assert exact["token_f1"] == 1.0 and exact["context_ratio"] == 1.0 and exact["other_inserted_flagged_in_context"] == 0.0
    # flagging the remark too costs nothing (its tokens are left out) but shows in its own line
    both = sentence_labelled_metrics([doc], [word_scores(text, [med_span, remark_span])], alone, labels, 0.5)
    assert both["token_f1"] == 1.0 and both["other_inserted_flagged_in_context"] == 1.0
    # flagging the host costs precision
    host_too = sentence_labelled_metrics([doc], [word_scores(text, [(0, med_span[1])])], alone, labels, 0.5)
    assert host_too["token_precision"] < 1.0 and host_too["token_recall"] == 1.0
    # one sentence without a label: no sentence-labelled metrics at all, rather than metrics on part of the data
    missing = sentence_labelled_metrics([doc], [word_scores(text, [med_span])], alone, {sentence_id(med): "medicine"}, 0.5)
    assert missing == {"available": False, "unlabelled_sentences": 1, "inserted_total": 2}


def test_a_bad_sentence_label_is_an_error_naming_the_line(tmp_path):
    path = tmp_path / "labels.jsonl"
    path.write_text('{"id": "a", "label": "medicine"}\n{"id": "b", "label": "medical"}\n')
    with pytest.raises(ValueError, match=r"labels.jsonl:2: label must be one of"):
        load_sentence_labels(path)
    assert load_sentence_labels(tmp_path / "absent.jsonl") == {}


def write_corpus(folder: Path, train: list[str], validation: list[str]) -> Path:
    folder.mkdir()
    for split, texts in (("train", train), ("validation", validation)):
        (folder / f"{split}.jsonl").write_text("".join(json.dumps({"id": f"{split}-{i}", "text": t}) + "\n" for i, t in enumerate(texts)))
    return folder


def test_passages_sharing_a_word_sequence_with_a_training_corpus_are_left_out(tmp_path):
    lead = "Bronchitis is inflammation of the bronchi in the lungs that usually causes coughing and mucus"
    passages = [Passage("g1", "general", f"The town grew. {lead}. It rained."),
                Passage("g2", "general", f"{GENERAL[0]} {GENERAL[1]}"), Passage("b1", "bio", f"{BIO[0]} {BIO[1]}"),
                Passage("m1", "med", lead.upper().replace(" THE ", " the\n") + "!")]  # case and spacing do not hide it
    one_word_short = " ".join(f"{BIO[0]} {BIO[1]}".split()[:SEEN_NGRAM_WORDS - 1])
    corpus = write_corpus(tmp_path / "corpus", [f"Bronchitis: {lead.lower()}, often after a cold.", one_word_short],
                          ["An unrelated validation document about ships and harbours and their long history."])
    kept, dropped = drop_seen_passages(passages, [corpus])
    assert [p.id for p in kept] == ["g2", "b1"]  # one word short of SEEN_NGRAM_WORDS in a row is not a copy
    assert dropped == {"general": ["g1"], "med": ["m1"]}
    assert drop_seen_passages(passages, []) == (passages, {})
    validation_only = write_corpus(tmp_path / "validation_only", [], [f"{GENERAL[0]}\n{GENERAL[1]}"])
    assert drop_seen_passages(passages, [validation_only])[1] == {"general": ["g2"]}  # calibration data counts too


def test_documents_without_seen_text_are_the_same_documents(tmp_path):
    """Leaving a seen passage out drops the mixed documents it is part of and keeps the others as
    they were, so the sentence labels written for them still apply."""
    meds = [Passage(f"m{i}", "med", f"{sentence} Case {i} was reviewed by the team on the ward that week.")
            for i, sentence in enumerate(MED)]
    hosts = [Passage(f"g{i}", "general", " ".join(GENERAL[j % 3] for j in range(i, i + 2))) for i in range(6)]
    everything = build_mixed_documents(meds + hosts, seed=3)
    corpus = write_corpus(tmp_path / "corpus", [f"Notes: {MED[0]} Case 0 was reviewed."], [])  # m0 is seen
    kept, mixed, dropped = unseen_mixed_documents(meds + hosts, [corpus], seed=3)
    assert dropped == {"med": ["m0"]} and [p.id for p in kept] == [p.id for p in meds[1:] + hosts]
    assert mixed == [m for m in everything if "m0" not in m.inserted_from] and 0 < len(mixed) < len(everything)


def write_realtext(folder: Path, per_domain: int = 40) -> Path:
    folder.mkdir()
    texts = {"med": MED, "bio": BIO, "bio_gray": (BIO[0], MED[2]), "general": GENERAL}
    for domain, sentences in texts.items():
        with open(folder / f"{domain}.jsonl", "w") as fh:
            for i in range(per_domain):
                text = " ".join(sentences[(i + j) % len(sentences)] for j in range(3))
                fh.write(json.dumps({"id": f"{domain}-{i}", "text": text}) + "\n")
    return folder


def test_benchmark_scores_a_joint_model_and_writes_its_misses(tmp_path, tiny_joint_model_dir):
    data, out = write_realtext(tmp_path / "realtext"), tmp_path / "out"
    labels = tmp_path / "labels.jsonl"  # the randomized-trial sentence names no condition's treatment as medicine here
    labels.write_text("".join(json.dumps({"id": sentence_id(m), "label": "not_medicine" if "randomized" in m else "medicine"}) + "\n"
                              for m in MED))
    corpus = write_corpus(tmp_path / "corpus", ["A corpus that holds none of the passages."], ["Nor does this."])
    reply = subprocess.run([sys.executable, str(BENCHMARKS / "real_text.py"), "--data", str(data), "--split", "dev",
                            "--model", f"tiny={tiny_joint_model_dir}", "--sentence-labels", str(labels), "--out", str(out),
                            "--seen-corpus", str(corpus)], capture_output=True, text=True)
    assert reply.returncode == 0, reply.stderr
    result = json.loads((out / "real_text_dev.json").read_text())
    row = result["rows"]["tiny"]
    assert result["seen_corpora"] == [str(corpus)] and result["seen_passages_left_out"] == {}
    assert result["mixed_docs"] == result["passages"]["bio"] + result["passages"]["general"] > 0
    assert 0 <= row["mixed_token_f1"] <= 1 and 0 <= row["inserted_sentences_missed_alone"] <= 1
    assert 0 < len(row["misses"]) <= MISSES_SHOWN
    assert all(x["sentence"] in MED and 0 <= x["in_context"] <= 1 and 0 <= x["alone"] <= 1 for x in row["misses"])
    assert [x["in_context"] for x in row["misses"]] == sorted(x["in_context"] for x in row["misses"])
    assert "doc_recall_mixed_at_card" in row  # the joint model's document head scored the documents
    counts = row["sentence_labelled"]["inserted_sentences"]
    assert counts["medicine"] > 0 and counts["not_medicine"] > 0 and counts["borderline"] == 0
    assert result["mixed_docs"] <= sum(counts.values()) <= 2 * result["mixed_docs"]  # 1-2 insertions a document
    assert 0 <= row["sentence_labelled"]["token_f1"] <= 1
    assert {x["label"] for x in row["misses"]} <= {"medicine", "not_medicine"}
    # documents the labels do not cover (another seed or data): n/a, never metrics on part of them
    row["sentence_labelled"] = {"available": False, "unlabelled_sentences": 3, "inserted_total": 5}
    md = markdown(result)
    assert "| sentence labels: **token F1** | n/a |" in md and "| sentence labels: mixed token F1 >= 0.85 | n/a |" in md
    assert "## `tiny`" in (out / "real_text_dev_misses.md").read_text()
    assert (out / "real_text_dev.md").is_file() and (out / "real_text_dev.png").stat().st_size > 0


def test_benchmark_without_data_says_so_and_exits_0(tmp_path):
    reply = subprocess.run([sys.executable, str(BENCHMARKS / "real_text.py"), "--data", str(tmp_path / "none"),
                            "--out", str(tmp_path / "out")], capture_output=True, text=True)
    assert reply.returncode == 0 and "not found" in reply.stdout and not (tmp_path / "out").exists()
