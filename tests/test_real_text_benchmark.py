"""benchmarks/real_text.py on a small real-text folder written here (the shared data is not needed):
the mixed-document builder, the metrics and the misses it writes, and its exit without data."""

import json
import subprocess
import sys
from pathlib import Path

from hypothesis import given, settings, strategies as st

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

from real_text import INSERTED_WORDS, MISSES_SHOWN, Passage, build_mixed_documents, medical_sentences  # noqa: E402

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
    allowed = set(medical_sentences([med]))
    assert (words(med_words) in allowed) == (INSERTED_WORDS[0] <= med_words <= INSERTED_WORDS[1])
    docs = build_mixed_documents([med, *hosts], seed)
    assert len(docs) == n_hosts
    for doc, host in zip(docs, hosts):
        assert 1 <= len(doc.inserted) <= 2 and doc.host_domain == host.domain
        assert all(doc.text[s:e] in allowed for s, e in doc.inserted)
        rest, last = [], 0
        for s, e in doc.inserted:
            rest.append(doc.text[last:s])
            last = e
        rest.append(doc.text[last:])
        assert " ".join(" ".join(rest).split()) == " ".join(host.text.split())  # the host's sentences, in order


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
    reply = subprocess.run([sys.executable, str(BENCHMARKS / "real_text.py"), "--data", str(data), "--split", "dev",
                            "--model", f"tiny={tiny_joint_model_dir}", "--out", str(out)], capture_output=True, text=True)
    assert reply.returncode == 0, reply.stderr
    result = json.loads((out / "real_text_dev.json").read_text())
    row = result["rows"]["tiny"]
    assert result["mixed_docs"] == result["passages"]["bio"] + result["passages"]["general"] > 0
    assert 0 <= row["mixed_token_f1"] <= 1 and 0 <= row["inserted_sentences_missed_alone"] <= 1
    assert 0 < len(row["misses"]) <= MISSES_SHOWN
    assert all(x["sentence"] in MED and 0 <= x["in_context"] <= 1 and 0 <= x["alone"] <= 1 for x in row["misses"])
    assert [x["in_context"] for x in row["misses"]] == sorted(x["in_context"] for x in row["misses"])
    assert "doc_recall_mixed_at_card" in row  # the joint model's document head scored the documents
    assert "## `tiny`" in (out / "real_text_dev_misses.md").read_text()
    assert (out / "real_text_dev.md").is_file() and (out / "real_text_dev.png").stat().st_size > 0


def test_benchmark_without_data_says_so_and_exits_0(tmp_path):
    reply = subprocess.run([sys.executable, str(BENCHMARKS / "real_text.py"), "--data", str(tmp_path / "none"),
                            "--out", str(tmp_path / "out")], capture_output=True, text=True)
    assert reply.returncode == 0 and "not found" in reply.stdout and not (tmp_path / "out").exists()
