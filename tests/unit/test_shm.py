"""Shared-memory regions: a batch's parts land stacked, grow the region, and read back."""

from __future__ import annotations

import os

import numpy as np

from inferd.backends.shm import Region


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
