"""Wire conversions: V2 JSON / binary tensors <-> numpy, and the worker IPC framing."""

import asyncio
import struct

import numpy as np
import orjson
import pytest

from inferd.backends import ipc
from inferd.common.codec import ValueBudget, from_list, from_raw, to_raw
from inferd.common.errors import ErrorCode, InferdError
from inferd.daemon.frontends import http_codec
from inferd.daemon.requests import InferResponse


def test_bytes_tensors_round_trip_through_the_length_prefixed_form():
    array = np.array([[b"a", b""], [b"\xff\x00", "é".encode()]], dtype=object)
    raw = to_raw(array)
    assert raw[:4] == struct.pack("<I", 1)
    back = from_raw("t", "BYTES", [2, 2], raw)
    assert back.tolist() == array.tolist()


def test_nested_and_flat_json_data_give_the_same_tensor():
    flat = from_list("t", "INT16", [2, 2], [1, 2, 3, 4])
    nested = from_list("t", "INT16", [2, 2], [[1, 2], [3, 4]])
    assert flat.dtype == np.int16 and np.array_equal(flat, nested)


@pytest.mark.parametrize("datatype,data", [("UINT8", [300]), ("INT32", ["x"]), ("BOOL", [[1, 2], [3]])])
def test_values_that_do_not_fit_the_datatype_are_refused(datatype, data):
    with pytest.raises(InferdError) as e:
        from_list("t", datatype, [1], data)
    assert e.value.code is ErrorCode.INVALID_ARGUMENT and "'t'" in e.value.message


def test_binary_request_slices_inputs_in_order_without_copying():
    a = np.arange(4, dtype=np.float32)
    b = np.arange(3, dtype=np.int64)
    header = (b'{"inputs":[{"name":"a","shape":[4],"datatype":"FP32","parameters":{"binary_data_size":16}},'
              b'{"name":"b","shape":[3],"datatype":"INT64","parameters":{"binary_data_size":24}}],'
              b'"outputs":[{"name":"o","parameters":{"binary_data":true}}],"id":"r1"}')
    request, fmt = http_codec.decode_request(header + a.tobytes() + b.tobytes(), len(header), ValueBudget(16))
    assert np.array_equal(request.inputs["a"], a) and np.array_equal(request.inputs["b"], b)
    assert request.outputs == ("o",) and request.id == "r1" and fmt.is_binary("o") and not fmt.is_binary("p")


async def test_response_binary_and_json_outputs_side_by_side():
    response = InferResponse("m", "1", {"j": np.array([1.5, 2.5], np.float32), "b": np.array([7], np.int32)}, "id9")
    fmt = http_codec.OutputFormat(binary={"b": True})
    parts, n = await http_codec.encode_response(response, fmt)
    body = b"".join(parts)
    doc = orjson.loads(body[:n])
    assert doc["id"] == "id9"
    assert doc["outputs"][0]["data"] == [1.5, 2.5]
    assert doc["outputs"][1]["parameters"]["binary_data_size"] == 4 and body[n:] == np.array([7], np.int32).tobytes()


async def test_non_utf8_bytes_output_must_travel_as_binary():
    response = InferResponse("m", "1", {"s": np.array([b"\xff"], dtype=object)})
    with pytest.raises(InferdError, match="binary_data"):
        await http_codec.encode_response(response, http_codec.OutputFormat())


async def test_a_big_json_output_is_written_in_slices_that_give_up_the_loop():
    big = np.arange(http_codec.JSON_SLICE * 2 + 5, dtype=np.float32) / 4
    texts = np.array([b"a", "\u00fc".encode()] * (http_codec.JSON_SLICE // 2 + 1), dtype=object)
    response = InferResponse("m", "1", {"f": big.reshape(1, -1), "t": texts}, "r")
    turns = 0

    async def count_turns():
        nonlocal turns
        while True:
            await asyncio.sleep(0)
            turns += 1

    counter = asyncio.ensure_future(count_turns())
    await asyncio.sleep(0)
    parts, n = await http_codec.encode_response(response, http_codec.OutputFormat())
    counter.cancel()
    body = b"".join(parts)
    doc = orjson.loads(body)
    assert n is None and doc["id"] == "r" and doc["outputs"][0]["shape"] == [1, big.size]
    assert np.array_equal(np.array(doc["outputs"][0]["data"], np.float32), big)
    assert doc["outputs"][1]["data"] == ["a", "\u00fc"] * (http_codec.JSON_SLICE // 2 + 1)
    assert turns >= 3  # the loop ran between slices


def test_ipc_tensors_keep_dtype_shape_and_bytes():
    tensors = {"f": np.arange(6, dtype=np.float16).reshape(2, 3), "s": np.array([[b"x"], [b"yz"]], dtype=object),
               "u": np.array([[2**64 - 1]], np.uint64)}
    header, payload = ipc.encode({"type": ipc.EXECUTE, "inputs": ipc.pack_tensors(tensors)})
    (length,) = ipc.HEADER.unpack(header)
    buf = bytearray(header + payload + header[:2])  # one whole frame and the start of the next
    [msg] = ipc.split_frames(buf)
    assert length == len(payload) and msg["type"] == ipc.EXECUTE and buf == header[:2]
    back = ipc.unpack_tensors(msg["inputs"])
    for name, array in tensors.items():
        assert back[name].dtype == array.dtype and back[name].tolist() == array.tolist()


def test_ipc_refuses_another_protocol_version():
    import msgpack

    with pytest.raises(ValueError, match="version"):
        ipc.decode(msgpack.packb({"v": 99, "type": ipc.STOP}))


@pytest.mark.parametrize("poll_s", [0.0, 0.05])
def test_ipc_receiver_gets_frames_sent_while_it_polls_and_after_it_sleeps(poll_s):
    import socket
    import threading
    import time

    daemon_end, worker_end = socket.socketpair()
    with daemon_end, worker_end:
        receiver = ipc.Receiver(worker_end)
        receiver.poll_until = time.monotonic() + poll_s if poll_s else 0.0
        big = {"type": ipc.EXECUTE, "blob": bytes(300_000)}  # larger than one recv: several reads
        sender = threading.Thread(target=lambda: [ipc.send(daemon_end, m) for m in ({"type": ipc.EXECUTE, "batch": 1}, big)])
        sender.start()  # the big frame fills the socket's buffer: it is sent while the receiver reads
        assert receiver.recv()["batch"] == 1
        assert receiver.recv()["blob"] == big["blob"]
        sender.join()
        # Sent during the poll window, then well after it (the receiver is asleep in recv by then).
        for delay in (0.01, 0.2):
            receiver.poll_until = time.monotonic() + poll_s if poll_s else 0.0
            timer = threading.Timer(delay, ipc.send, (daemon_end, {"type": ipc.STOP, "delay": delay}))
            started = time.monotonic()  # before the timer starts: a busy machine may run it at once
            timer.start()
            assert receiver.recv()["delay"] == delay
            assert time.monotonic() - started >= delay * 0.9
            timer.join()
        daemon_end.close()
        assert receiver.recv() is None  # the daemon's end closed
