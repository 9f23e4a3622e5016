"""Shared-memory regions: a batch's parts land stacked, grow the region, and read back."""

from __future__ import annotations

import os

import numpy as np

from inferd.backends import ipc
from inferd.backends.shm import INLINE_BYTES, Region


def test_parts_are_stacked_in_place_and_read_back():
    writer = Region.create("inferd-test", size=4096)
    reader = Region(os.dup(writer.fd), writer.size)
    try:
        a = np.arange(6, dtype=np.float32).reshape(2, 3)
        b = np.arange(6, 9, dtype=">f4").reshape(1, 3)  # big-endian in, little-endian on the wire
        big = np.ones((1, 4096), np.int64)  # 32 KB: the region must grow
        text = np.array([[b"x", "y"]], dtype=object)
        items = writer.write({"a": [a, b], "big": [big], "text": [text]})
        assert writer.size >= 32 * 1024
        reader.follow(writer.size)
        out = reader.read(items, copy=True)
        np.testing.assert_array_equal(out["a"], np.arange(9, dtype=np.float32).reshape(3, 3))
        assert out["a"].dtype == np.float32 and out["big"].shape == (1, 4096)
        assert out["text"].tolist() == [[b"x", b"y"]]
    finally:
        writer.close()
        reader.close()


def test_small_tensors_travel_in_the_message_and_large_ones_in_the_region():
    writer = Region.create("inferd-test", size=4096)
    reader = Region(os.dup(writer.fd), writer.size)
    try:
        small = np.arange(INLINE_BYTES // 4, dtype=np.int32).reshape(1, -1)  # exactly the limit
        large = np.arange(INLINE_BYTES // 4 + 1, dtype=np.int32).reshape(1, -1)  # one element over
        items = writer.write({"small": [small], "large": [large], "stacked": [small[:, :8], small[:, 8:16]]})
        kinds = {item[0]: "inline" if len(item) == 4 else "region" for item in items}
        assert kinds == {"small": "inline", "large": "region", "stacked": "inline"}
        reader.follow(writer.size)
        sent = ipc.decode(ipc.encode({"type": ipc.EXECUTE, "inputs": items})[1])["inputs"]  # as the worker gets them
        out = reader.read(sent, copy=False)
        np.testing.assert_array_equal(out["small"], small)
        np.testing.assert_array_equal(out["large"], large)
        np.testing.assert_array_equal(out["stacked"], np.concatenate([small[:, :8], small[:, 8:16]]))
        # An inline tensor is a view of the message's bytes: read-only, and safe to keep.
        assert not out["small"].flags.writeable and out["large"].flags.writeable
    finally:
        writer.close()
        reader.close()
