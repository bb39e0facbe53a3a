"""The demo's excerpt of a filtered document shows the flagged spans, marked, wherever they are."""

from tokfilter.demo import excerpt, highlight
from tokfilter.windows import Span


def test_excerpt_starts_before_the_focus_and_stays_inside_the_text():
    text = "x" * 1000
    assert excerpt(text, 600, 200) == (550, 750)
    assert excerpt(text, 10, 200) == (0, 200)
    assert excerpt(text, 990, 200) == (800, 1000)
    assert excerpt("short", 3, 200) == (0, 5)


def test_highlight_marks_a_span_far_into_a_long_document():
    text = "benign words. " * 100 + "Metformin lowers blood glucose." + " more benign words." * 50
    start = text.index("Metformin")
    end = start + len("Metformin lowers blood glucose.")
    shown = highlight(text, [Span(start, end, 0.9)], width=300)
    assert "[[Metformin lowers blood glucose.]]" in shown
    assert shown.startswith("... ") and shown.endswith(" ...")


def test_highlight_clips_spans_at_the_excerpt_edges_and_keeps_unflagged_text_whole():
    text = "a" * 50 + "b" * 50
    assert highlight(text, [Span(40, 100, 0.8)], width=100) == "a" * 40 + "[[" + "a" * 10 + "b" * 50 + "]]"
    assert highlight(text, [], width=100) == text


def test_demo_builds_the_joint_model_only(tmp_path, monkeypatch):
    """A fresh build trains one model (the joint one, both heads) and places it with the default
    model-repo; an existing joint export is reused."""
    from tokfilter import demo, paths

    steps = []
    monkeypatch.setattr(demo, "run_step", steps.append)
    for name in ("CORPUS_DIR", "JOINT_MODEL_DIR", "TARGET_TOKENIZER"):
        monkeypatch.setattr(paths, name, tmp_path / name.lower())
    demo.build_missing("tiny")
    assert [s for s in steps if s[0] == "train-classifier"] == [["train-classifier", "--task", "joint"]]
    assert steps[-1] == ["model-repo"]
    steps.clear()
    (tmp_path / "joint_model_dir").mkdir()
    (tmp_path / "joint_model_dir" / "model.int8.onnx").touch()
    demo.build_missing("tiny")
    assert not [s for s in steps if s[0] == "train-classifier"]
