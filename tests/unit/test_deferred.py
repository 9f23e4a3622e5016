"""common.deferred: a tensor still in a file, read straight into where it goes (a batch region's
rows, or an array of its own), and a short read (a shrunk file) as a clear error that names the
part of the batch it belongs to."""

from __future__ import annotations

import os

import numpy as np
import pytest

from inferd.backends.shm import INLINE_BYTES, Region
from inferd.common.deferred import FileSlice, UnreadPart, stack_into, stacked
from inferd.common.errors import ErrorCode, invalid


class Source:
    """What FileSlice needs of the daemon's region: an fd, hold/release, shrunk."""

    def __init__(self, fd: int):
        self.fd = fd
        self.holders = 0

    def hold(self):
        self.holders += 1

    def release(self):
        self.holders -= 1

    def shrunk(self):
        return invalid("the file shrank")


@pytest.fixture
def make_source(tmp_path):
    fds = []

    def make(data: bytes) -> Source:
        path = tmp_path / f"region{len(fds)}"
        path.write_bytes(data)
        fds.append(os.open(path, os.O_RDWR))
        return Source(fds[-1])

    yield make
    for fd in fds:
        os.close(fd)


def test_a_slice_reads_into_a_destination_and_materializes(make_source):
    values = np.arange(24, dtype=np.float32).reshape(2, 12)
    source = make_source(b"head" + values.tobytes())
    piece = FileSlice(source, 4, np.dtype(np.float32), (2, 12))
    assert (piece.shape, piece.ndim, piece.nbytes, piece.dtype) == ((2, 12), 2, 96, np.float32)
    assert source.holders == 1
    np.testing.assert_array_equal(piece.materialize(), values)
    out = np.zeros((3, 12), np.float32)
    piece.read_into(out[1:])
    np.testing.assert_array_equal(out[1:], values)
    assert not out[0].any()
    with pytest.raises(ValueError, match="contiguous destination"):
        piece.read_into(np.zeros((12, 4), np.float32)[:, :2])  # (a copy would swallow the data)
    other = FileSlice(source, 4, np.dtype(np.float32), (2, 12))
    assert source.holders == 2
    other.release()  # its request is done: let go, and read no more
    other.release()
    assert source.holders == 1
    with pytest.raises(Exception, match="after its request was done"):
        other.materialize()
    del piece, other
    assert source.holders == 0  # (a slice never released lets go when it is collected)


def test_a_short_read_is_the_sources_error_and_names_its_part(make_source):
    values = np.arange(64, dtype=np.int32).reshape(4, 16)
    source = make_source(values.tobytes())
    whole = FileSlice(source, 0, np.dtype(np.int32), (4, 16))
    os.ftruncate(source.fd, 100)
    with pytest.raises(Exception, match="shrank") as raised:
        whole.materialize()
    assert raised.value.code is ErrorCode.INVALID_ARGUMENT
    sent = np.ones((1, 16), np.int32)
    with pytest.raises(UnreadPart) as raised:
        stacked([sent, whole])
    assert raised.value.index == 1 and raised.value.code is ErrorCode.INVALID_ARGUMENT and "shrank" in raised.value.message


def test_stacking_mixes_slices_and_arrays_in_order(make_source):
    a, b = np.arange(32, dtype=np.int32).reshape(2, 16), np.full((1, 16), 7, np.int32)
    source = make_source(a.tobytes())
    piece = FileSlice(source, 0, np.dtype(np.int32), (2, 16))
    np.testing.assert_array_equal(stacked([b, piece, b]), np.concatenate([b, a, b]))
    np.testing.assert_array_equal(stacked([piece]), a)
    assert stacked([b]) is b
    out = np.empty((3, 16), np.int32)
    stack_into([piece, b], out)
    np.testing.assert_array_equal(out, np.concatenate([a, b]))


def test_the_batch_region_reads_slices_straight_into_its_rows(make_source):
    """backends.shm.Region.write: large parts read into the region, small ones into the message."""
    big = np.arange(2 * INLINE_BYTES, dtype=np.float32).reshape(2, -1)
    small = np.arange(8, dtype=np.int32).reshape(1, 8)
    source = make_source(big.tobytes() + small.tobytes())
    writer = Region.create("inferd-test", size=4096)
    reader = Region(os.dup(writer.fd), writer.size)
    try:
        sent = big[:1] + 1
        items = writer.write({
            "big": [FileSlice(source, 0, np.dtype(np.float32), big.shape), sent],
            "small": [FileSlice(source, big.nbytes, np.dtype(np.int32), (1, 8)), small]})
        assert {item[0]: len(item) for item in items} == {"big": 5, "small": 4}  # region, inline
        reader.follow(writer.size)
        out = reader.read(items, copy=True)
        np.testing.assert_array_equal(out["big"], np.concatenate([big, sent]))
        np.testing.assert_array_equal(out["small"], np.concatenate([small, small]))
    finally:
        writer.close()
        reader.close()
