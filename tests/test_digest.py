"""One file-digest helper: streamed in blocks, equal to hashing the whole file at once."""

import hashlib

from hypothesis import given, settings
from hypothesis import strategies as st

from tokfilter.digest import file_sha256

BLOCK = 1 << 20


@settings(max_examples=25, deadline=None)
@given(head=st.binary(max_size=64), size=st.sampled_from([0, 1, BLOCK - 1, BLOCK, BLOCK + 1, 2 * BLOCK + 7]))
def test_streamed_digest_equals_the_whole_file_digest(tmp_path_factory, head, size):
    data = (head * (size // max(len(head), 1) + 1))[:size] if head else bytes(size)
    path = tmp_path_factory.mktemp("digest") / "f.bin"
    path.write_bytes(data)
    assert file_sha256(path) == file_sha256(str(path)) == hashlib.sha256(data).hexdigest()
