"""FilterClient's retry rule: what a healing server fails is retried until the deadline, a
configuration error (a refused API key) never is."""

import time

import pytest
from hypothesis import given
from hypothesis import strategies as st
from tritonclient.utils import InferenceServerException

from tokfilter.clients.filter_client import TRANSIENT_MESSAGES, ServerError, is_transient, retry_transient

# Messages seen from Triton 2.51 and grpc while a stub or tritonserver was killed and healed
HEALING = [
    ("[StatusCode.INTERNAL] Stub process 'token_classifier_0_0' is not healthy.", "StatusCode.INTERNAL"),
    ("[StatusCode.NOT_FOUND] Request for unknown model: 'token_classifier' has no available versions", "StatusCode.NOT_FOUND"),
    ("[StatusCode.UNAVAILABLE] failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:52415: "
     "Failed to connect to remote host: Connection refused", "StatusCode.UNAVAILABLE"),
    ("[StatusCode.UNAVAILABLE] Socket closed", "StatusCode.UNAVAILABLE"),
]
REFUSED_KEY = ("[StatusCode.UNAVAILABLE] This protocol is restricted, expecting header 'triton-grpc-protocol-x-api-key'",
               "StatusCode.UNAVAILABLE")


@pytest.mark.parametrize("message, status", HEALING)
def test_healing_server_errors_are_transient(message, status):
    assert is_transient(InferenceServerException(message, status=status))


def test_a_refused_key_is_not_transient_though_triton_answers_unavailable():
    assert not is_transient(InferenceServerException(*REFUSED_KEY))


@given(st.text(), st.sampled_from(TRANSIENT_MESSAGES), st.text())
def test_restricted_is_never_retried_whatever_else_the_message_says(before, marker, after):
    assert not is_transient(InferenceServerException(f"{before}{marker} this protocol is Restricted{after}"))
    assert is_transient(InferenceServerException(f"{before}{marker}{after}")) == ("restricted" not in f"{before}{marker}{after}".lower())


def failing(message: str, status: str, calls: list):
    def call():
        calls.append(time.monotonic())
        raise InferenceServerException(message, status=status)
    return call


def test_transient_failures_are_retried_until_the_deadline_then_a_clear_error():
    calls = []
    start = time.monotonic()
    with pytest.raises(ServerError, match="did not recover within the retry deadline of 1 s"):
        retry_transient(failing(*HEALING[0], calls), 1.0, "Triton")
    assert 1.0 <= time.monotonic() - start < 2.0 and len(calls) >= 4  # pauses 0.1, 0.2, 0.4, then the rest


def test_configuration_errors_fail_at_once():
    calls = []
    with pytest.raises(ServerError, match="restricted"):
        retry_transient(failing(*REFUSED_KEY, calls), 30.0, "Triton")
    assert len(calls) == 1
