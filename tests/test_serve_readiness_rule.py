"""The rule by which tests and benchmarks judge /readyz: "ready" while inference was failing."""

from hypothesis import given
from hypothesis import strategies as st

from tokfilter.server.supervisor import readiness_lies


def rows(*spec):
    """(sent, received, ok) rows from (sent, ok) pairs, answered 10 ms later."""
    return [(t, t + 0.01, ok) for t, ok in spec]


PROBES = rows((0.0, True), (0.5, False), (1.0, False), (2.0, False), (3.0, True), (3.5, True))


def test_ready_between_failures_long_after_they_began_is_a_lie():
    assert readiness_lies(PROBES, rows((1.6, True), (2.5, False)), grace_s=1.0) == [1.6]


def test_ready_within_the_grace_after_the_fault_is_not():
    assert readiness_lies(PROBES, rows((0.7, True)), grace_s=1.0) == []


def test_ready_just_before_inference_worked_again_is_not():
    assert readiness_lies(PROBES, rows((2.9, True)), grace_s=1.0) == []  # the next inference answered


def test_a_silent_prober_proves_nothing():
    assert readiness_lies(PROBES[:4], rows((2.5, True)), grace_s=1.0) == []  # no inference after it


@given(st.lists(st.tuples(st.floats(0, 100), st.booleans())), st.lists(st.tuples(st.floats(0, 100), st.booleans())))
def test_no_lie_without_a_failure_or_a_ready(probes, readiness):
    probes, readiness = rows(*sorted(probes)), rows(*sorted(readiness))
    assert readiness_lies([(s, r, True) for s, r, _ in probes], readiness, 1.0) == []
    assert readiness_lies(probes, [(s, r, False) for s, r, _ in readiness], 1.0) == []
    assert set(readiness_lies(probes, readiness, 1.0)) <= {s for s, _, ok in readiness if ok}
