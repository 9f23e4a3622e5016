"""The shared-memory mailbox between the daemon and a worker: exactly the next message is
taken, a message too large for it is refused whole, another process sees what is posted, and
the worker's receiver takes posted messages while it polls and when a WAKE frame rings."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
import time

import pytest

from inferd.backends import ipc, mailbox
from inferd.backends.mailbox import CAPACITY, Mailbox


@pytest.fixture
def pair():
    daemon = Mailbox.create("inferd-test-mailbox")
    worker = Mailbox(os.dup(daemon.fd), 1)
    yield daemon, worker
    daemon.close()
    worker.close()


def test_each_side_takes_the_other_sides_messages_once_and_in_order(pair):
    daemon, worker = pair
    assert worker.take() is None and daemon.take() is None  # nothing posted yet
    assert daemon.post(b"first")
    assert daemon.take() is None  # a side never reads its own slot
    assert worker.take() == b"first"
    assert worker.take() is None  # taken: the same number is not the next one
    assert worker.post(b"answer" * 100)
    assert daemon.take() == b"answer" * 100
    assert daemon.post(b"second") and worker.take() == b"second"  # shorter than the slot's last payload


def test_a_message_larger_than_the_slot_is_refused_and_nothing_is_posted(pair):
    daemon, worker = pair
    assert not daemon.post(bytes(CAPACITY + 1))
    assert worker.take() is None
    assert daemon.post(bytes(CAPACITY)) and worker.take() == bytes(CAPACITY)  # exactly full fits


def test_another_process_sees_each_post(pair):
    daemon, _ = pair
    echo = textwrap.dedent(f"""
        import time
        from inferd.backends.mailbox import Mailbox
        box = Mailbox({daemon.fd}, 1)
        for _ in range(200):
            until = time.monotonic() + 10
            while (payload := box.take()) is None:
                assert time.monotonic() < until, "nothing posted"
            box.post(payload[::-1])
    """)
    child = subprocess.Popen([sys.executable, "-c", echo], pass_fds=[daemon.fd])
    try:
        for i in range(200):
            message = f"message {i} ".encode() * (1 + i % 50)
            assert daemon.post(message)
            until = time.monotonic() + 10
            while (answer := daemon.take()) is None:
                assert time.monotonic() < until and child.poll() is None, "no answer"
            assert answer == message[::-1]
    finally:
        assert child.wait(timeout=10) == 0


def test_must_ring_when_the_reader_may_have_stopped_polling():
    assert mailbox.must_ring(0.0)  # not polling at all
    assert mailbox.must_ring(time.monotonic() + 1e-6)  # its window ends within the margin
    assert not mailbox.must_ring(time.monotonic() + 1.0)


def test_the_receiver_takes_posted_messages_while_polling_and_when_rung(pair):
    daemon, worker = pair
    daemon_end, worker_end = socket.socketpair()
    with daemon_end, worker_end:
        receiver = ipc.Receiver(worker_end, worker)
        # Posted while the worker polls: no frame on the socket at all.
        daemon.post(ipc.pack({"type": ipc.EXECUTE, "batch": 1}))
        receiver.poll_until = time.monotonic() + 5
        assert receiver.recv()["batch"] == 1 and receiver.posted
        # Posted after the window (the receiver sleeps on the socket): the WAKE brings it.
        daemon.post(ipc.pack({"type": ipc.EXECUTE, "batch": 2}))
        ipc.send(daemon_end, {"type": ipc.WAKE})
        assert receiver.recv()["batch"] == 2 and receiver.posted
        # A WAKE for a message already taken while polling is skipped.
        daemon.post(ipc.pack({"type": ipc.EXECUTE, "batch": 3}))
        ipc.send(daemon_end, {"type": ipc.WAKE})
        ipc.send(daemon_end, {"type": ipc.STOP})
        receiver.poll_until = time.monotonic() + 5
        assert receiver.recv()["batch"] == 3
        assert receiver.recv()["type"] == ipc.STOP and not receiver.posted
        daemon_end.close()
        assert receiver.recv() is None
