"""`tokfilter filter --dolma-attributes NAME`: attribute files that mirror a Dolma dataset's documents
files, rows in Dolma's documented schema (allenai/dolma docs/data-format.md), spans that Dolma's mixer
replaces with [hidden] the way tokfilter does."""

import gzip
import json

import jsonschema
import numpy as np
import pytest

from tokfilter.clients.engines.local import FilterSettings, run_local
from tokfilter.clients.export.dolma import attributes_path
from tokfilter.clients.shards.writer import open_shards
from tokfilter.errors import TokfilterError
from tokfilter.scoring import HIDDEN_TOKEN, ScoringPipeline, hide_spans

NAME = "tokfilter_v1"
# Dolma's attributes row: {"id": ..., "attributes": {"<experiment>__<tagger>__<attribute>": [[start, end, score], ...]}}
DOLMA_ATTRIBUTES_ROW = {
    "type": "object",
    "required": ["id", "attributes"],
    "properties": {
        "id": {"type": "string"},
        "attributes": {
            "type": "object",
            "propertyNames": {"pattern": r"^[A-Za-z0-9_.\-]+__[A-Za-z0-9_.\-]+__[A-Za-z0-9_.\-]+$"},
            "additionalProperties": {
                "type": "array",
                "items": {"type": "array", "prefixItems": [{"type": "integer", "minimum": 0}, {"type": "integer", "minimum": 0},
                                                           {"type": "number"}], "minItems": 3, "maxItems": 3},
            },
        },
    },
}


def mixer_span_replacement(text: str, spans: list, min_score: float, replacement: str) -> str:
    """What `dolma mix` does with `span_replacement` (docs/mixer.md): spans scoring >= min_score replaced."""
    for start, end, score in sorted(spans, reverse=True):
        if score >= min_score:
            text = text[:start] + replacement.replace("{}", text[start:end]) + text[end:]
    return text


@pytest.fixture(scope="module")
def dataset(tiny_corpus_dir, tmp_path_factory):
    """A Dolma dataset: documents/a.jsonl.gz (with one record lacking text), documents/sub/b.jsonl, documents/c.jsonl (empty)."""
    docs = [json.loads(line) for line in (tiny_corpus_dir / "test.jsonl").read_text().splitlines()[:14]]
    root = tmp_path_factory.mktemp("dataset")
    (root / "documents" / "sub").mkdir(parents=True)
    rows = [{"id": d["id"], "text": d["text"], "source": "tiny"} for d in docs]
    a = rows[:8] + [{"id": "no-text", "source": "tiny"}]
    with gzip.open(root / "documents" / "a.jsonl.gz", "wt") as f:
        f.write("".join(json.dumps(r) + "\n" for r in a))
    (root / "documents" / "sub" / "b.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[8:]))
    (root / "documents" / "c.jsonl").write_text("")
    return root, {"a.jsonl.gz": a, "sub/b.jsonl": rows[8:], "c.jsonl": []}


def test_attributes_mirror_the_documents_in_dolmas_schema(tiny_models_dir, tiny_target_tokenizer, dataset, tmp_path):
    root, files = dataset
    token_dir, doc_dir = tiny_models_dir / "token_classifier", tiny_models_dir / "doc_classifier"
    texts = [r["text"] for rows in files.values() for r in rows if "text" in r]
    pipeline = ScoringPipeline.from_model_dirs(token_dir, doc_dir)
    threshold = float(np.median(np.concatenate([s.token_probs for s in pipeline.score(texts)])))  # some flagged, some not
    expected = iter(pipeline.score(texts, threshold))
    settings = FilterSettings(token_model=str(token_dir), doc_model=str(doc_dir), target_tokenizer=str(tiny_target_tokenizer),
                              buffer_docs=4, shard_tokens=300, threads=1, threshold=threshold, dolma_attributes=NAME)
    manifest = run_local([str(root / "documents" / name) for name in files], tmp_path / "shards", settings, show_progress=False)
    doc_scores = np.concatenate([s.doc_scores for s in open_shards(tmp_path / "shards")[1]])
    assert manifest["counts"]["skipped"] == 1

    keys = {a: f"{NAME}__tokfilter__{a}" for a in ("forget", "doc_score", "flagged_fraction")}
    seen_spans = 0
    scored = 0
    for name, documents in files.items():
        path = root / "attributes" / NAME / name
        opener = gzip.open if name.endswith(".gz") else open
        with opener(path, "rt") as f:
            rows = [json.loads(line) for line in f]
        # same rows, same order; a malformed record's row is empty and named by where the reader found it
        assert [r["id"] for r in rows] == [d["id"] if "text" in d else f"{root / 'documents' / name}:{i + 1}"
                                           for i, d in enumerate(documents)]
        for row, doc in zip(rows, documents):
            jsonschema.validate(row, DOLMA_ATTRIBUTES_ROW)
            if "text" not in doc:
                assert row["attributes"] == {}
                continue
            s, text = next(expected), doc["text"]
            attrs = row["attributes"]
            assert set(attrs) == set(keys.values())
            assert attrs[keys["forget"]] == [[sp.start, sp.end, pytest.approx(sp.score, abs=1e-6)] for sp in s.spans]
            assert all(0 <= a < b <= len(text) for a, b, _ in attrs[keys["forget"]])
            assert attrs[keys["doc_score"]] == [[0, len(text), pytest.approx(float(doc_scores[scored]), abs=1e-6)]]
            assert attrs[keys["flagged_fraction"]] == [[0, len(text), pytest.approx(s.flagged_fraction)]]
            # Dolma's mixer, told to replace the spans by [hidden], hides what tokfilter hides
            assert mixer_span_replacement(text, attrs[keys["forget"]], threshold, HIDDEN_TOKEN) == hide_spans(text, s.spans)
            seen_spans += len(s.spans)
            scored += 1
    assert seen_spans > 0 and scored == len(texts)

    with pytest.raises(TokfilterError, match="--resume cannot continue --dolma-attributes"):
        run_local([str(root / "documents" / name) for name in files], tmp_path / "shards", settings, resume=True, show_progress=False)


def test_attributes_path_follows_dolmas_rule():
    assert str(attributes_path("/d/cc/documents/2019-09/0933.jsonl.gz", "tf")) == "/d/cc/attributes/tf/2019-09/0933.jsonl.gz"
    assert str(attributes_path("documents/documents/x.jsonl", "tf")) == "documents/attributes/tf/x.jsonl"
    with pytest.raises(TokfilterError, match="is not inside a 'documents' directory"):
        attributes_path("/d/cc/docs/x.jsonl", "tf")
