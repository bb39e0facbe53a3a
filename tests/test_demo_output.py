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
