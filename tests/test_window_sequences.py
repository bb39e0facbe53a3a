"""One window-sequence builder: a classifier is trained on exactly the sequences it is served.

Training (``make_windows``) and serving (``ScoringPipeline``, as every scoring path runs it) are
compared on the same texts, for the BERT tokenizer of the classifiers and for tokenizers whose
special tokens are not [CLS]/[SEP] (the builder reads them from the tokenizer, never assumes them).
"""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tokenizers.processors import TemplateProcessing

from tokfilter.errors import TokfilterError
from tokfilter.scoring import ScoredModel, ScoringPipeline
from tokfilter.training.classifier.train import encode_documents, encoder_path, make_windows
from tokfilter.windows import WindowSequences, load_tokenizer, special_tokens

WORDS = ["metformin", "lowers", "blood", "glucose", "the", "river", "cell", "mitochondria", "ibuprofen", "200mg",
         "naïve", "Überweisung", "日本語", "—", "\n", "  ", ".", ","]


def bert_tokenizer():
    return load_tokenizer(encoder_path() / "tokenizer.json")


def with_template(single: str, added: list[str]):
    """The classifier's tokenizer with other special tokens around a sequence (RoBERTa-, GPT-style)."""
    tokenizer = bert_tokenizer()
    tokenizer.add_special_tokens(added)
    tokenizer.post_processor = TemplateProcessing(single=single, special_tokens=[(t, tokenizer.token_to_id(t)) for t in added])
    return tokenizer


TOKENIZERS = {
    "bert": bert_tokenizer,
    "roberta_style": lambda: with_template("<s> $A </s>", ["<s>", "</s>"]),
    "bos_only": lambda: with_template("<|bos|> $A", ["<|bos|>"]),
}


class RecordingScorer:
    """A window scorer that keeps the unpadded model inputs it is called with."""

    def __init__(self, per_token: bool):
        self.per_token = per_token
        self.inputs: list[tuple[int, ...]] = []

    def __call__(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        for row, row_mask in zip(ids, mask):
            assert row_mask.tolist() == sorted(row_mask.tolist(), reverse=True)  # attended prefix, then padding
            self.inputs.append(tuple(int(i) for i in row[row_mask == 1]))
        return np.zeros(ids.shape if self.per_token else ids.shape[:1], dtype=np.float32)


@pytest.fixture(scope="module", params=sorted(TOKENIZERS))
def tokenizer(request):
    return TOKENIZERS[request.param]()


texts = st.lists(st.one_of(st.sampled_from(WORDS), st.text(max_size=12)), max_size=80).map(" ".join)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=texts, max_length=st.integers(4, 40), stride=st.integers(0, 40))
def test_training_and_serving_build_the_same_sequences(tokenizer, text, max_length, stride):
    prefix, suffix = special_tokens(tokenizer)
    if max_length <= len(prefix) + len(suffix) + 1:
        max_length = len(prefix) + len(suffix) + 2
    doc = {"text": text, "meta": {"label_spans": [], "passages": []}}
    sequences = WindowSequences.for_tokenizer(tokenizer, max_length, stride)
    trained = {task: sorted(tuple(int(i) for i in ids) for ids, _ in make_windows(encode_documents(tokenizer, [doc]), task, sequences))
               for task in ("token", "document")}

    token_scorer, doc_scorer = RecordingScorer(per_token=True), RecordingScorer(per_token=False)
    pipeline = ScoringPipeline(tokenizer, ScoredModel(token_scorer, max_length, stride), 0.5,
                               doc_model=ScoredModel(doc_scorer, max_length, stride))
    pipeline.score([text])

    assert sorted(token_scorer.inputs) == trained["token"]
    assert sorted(doc_scorer.inputs) == trained["document"]
    for ids in token_scorer.inputs:
        assert len(ids) <= max_length
        assert list(ids[: len(prefix)]) == prefix and list(ids[len(ids) - len(suffix):]) == suffix


def test_special_tokens_come_from_the_tokenizer():
    bert, roberta, bos = (TOKENIZERS[name]() for name in ("bert", "roberta_style", "bos_only"))
    assert special_tokens(bert) == ([bert.token_to_id("[CLS]")], [bert.token_to_id("[SEP]")])
    assert special_tokens(roberta) == ([roberta.token_to_id("<s>")], [roberta.token_to_id("</s>")])
    assert special_tokens(bos) == ([bos.token_to_id("<|bos|>")], [])


def test_labels_stay_aligned_with_their_tokens_around_any_special_tokens():
    tokenizer = TOKENIZERS["roberta_style"]()
    sequences = WindowSequences.for_tokenizer(tokenizer, max_length=8, stride=2)
    ids = np.arange(100, 120)
    values = np.arange(20)
    for w in sequences.plan(len(ids)):
        seq, aligned = sequences.sequence(ids, w), sequences.aligned(values, w, fill=-100)
        assert len(seq) == len(aligned) <= 8
        content = sequences.content(seq, w)
        assert content.tolist() == ids[w.start:w.end].tolist()
        assert sequences.content(aligned, w).tolist() == values[w.start:w.end].tolist()
        assert aligned[0] == aligned[-1] == -100


def test_a_window_without_room_for_content_is_refused():
    with pytest.raises(TokfilterError, match="max_length must exceed the 2 special tokens"):
        WindowSequences.for_tokenizer(bert_tokenizer(), max_length=2, stride=0)
