"""Big JSON request bodies decoded off the event loop, in a few decoder processes.

orjson holds the GIL while it parses (~30 ms per MiB on a slow core, more for pathological
JSON), so a body over server.max_structured_bytes is not parsed in the daemon: it goes to a
decoder process (json_decoder.py) through a pipe, a slice per loop turn, and comes back as
numpy arrays. At most server.json_decoders processes are started, on first need; each decode
is bounded in time (json_decode_timeout_s) and resident memory (json_decode_memory_bytes): past
either the process is killed, and a process that dies is replaced on the next need. Admission
bounds the daemon's memory: at most json_decoders + json_decode_queue big bodies are held at
once (read, waiting or decoding); past that a request gets UNAVAILABLE (503) at once, before
its body is read.
"""

from __future__ import annotations

import asyncio
import os
import pickle
import sys

import structlog

from inferd.common.errors import ErrorCode, InferdError, invalid
from inferd.daemon.frontends.json_decoder import ERROR, HEADER, MEMORY, OK
from inferd.daemon.requests import RequestLimits

log = structlog.get_logger("inferd.http")
WRITE_SLICE = 1 << 20  # bytes of a body handed to the pipe per loop turn
WATCH_S = 0.02  # how often a decoding process's memory is looked at
PAGE = os.sysconf("SC_PAGE_SIZE")
_ONE_THREAD = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


class TooCostly(Exception):
    """The body needs more memory or time to decode than a decoder may spend (HTTP 413)."""


class _OverMemory(Exception):
    pass


class _Decoder:
    """One decoder process and its pipes; it decodes one body at a time."""

    def __init__(self, process: asyncio.subprocess.Process):
        self.process = process

    @classmethod
    async def start(cls, limits: RequestLimits) -> _Decoder:
        process = await asyncio.create_subprocess_exec(
            # -P: nothing is imported from the daemon's working directory (a stray numpy.py there).
            sys.executable, "-P", "-m", "inferd.daemon.frontends.json_decoder",
            str(os.getpid()), str(limits.json_decode_memory_bytes), str(limits.max_value_elements),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
            env={**os.environ, **_ONE_THREAD}, limit=WRITE_SLICE)
        log.info("json decoder started", pid=process.pid)
        return cls(process)

    async def decode(self, body: bytearray) -> tuple[int, memoryview]:
        stdin, stdout = self.process.stdin, self.process.stdout
        stdin.write(HEADER.pack(len(body)))
        view = memoryview(body)
        for start in range(0, len(view), WRITE_SLICE):
            stdin.write(view[start : start + WRITE_SLICE])
            await stdin.drain()
        del view
        (length,) = HEADER.unpack(await stdout.readexactly(HEADER.size))
        answer = memoryview(await stdout.readexactly(length))
        return answer[0], answer[1:]

    def resident_bytes(self) -> int:
        try:
            with open(f"/proc/{self.process.pid}/statm") as f:
                return int(f.read().split()[1]) * PAGE
        except (OSError, IndexError, ValueError):
            return 0

    async def kill(self) -> None:
        if self.process.returncode is None:
            self.process.kill()
        await self.process.wait()


class JsonDecoders:
    """The decoder processes of one HTTP front-end."""

    def __init__(self, limits: RequestLimits):
        self.limits = limits
        self._admitted = 0
        self._idle: list[_Decoder] = []
        self._busy: set[_Decoder] = set()
        self._turns = asyncio.Semaphore(limits.json_decoders)

    def admit(self) -> None:
        """Room for one more big body, or UNAVAILABLE; `release` once it is decoded."""
        if self._admitted >= self.limits.json_decoders + self.limits.json_decode_queue:
            raise InferdError(ErrorCode.UNAVAILABLE, f"{self._admitted} big JSON bodies are being decoded or wait "
                              "(server.json_decoders + server.json_decode_queue); retry later, or send big tensors "
                              "in binary form", retry_after_s=1)
        self._admitted += 1

    def release(self) -> None:
        self._admitted -= 1

    async def decode(self, body: bytearray) -> tuple:
        """(InferRequest, OutputFormat) of an admitted JSON body."""
        async with self._turns:
            decoder = await self._take()
            self._busy.add(decoder)
            try:
                kind, payload = await self._watched(decoder, body)
            except BaseException as e:
                self._busy.discard(decoder)
                await decoder.kill()  # its pipes are mid-message: it cannot take another body
                raise self._failure(e, decoder) from None
            self._busy.discard(decoder)
            self._idle.append(decoder)
        if kind == OK:
            return pickle.loads(payload)
        if kind == ERROR:
            raise invalid(bytes(payload).decode())
        assert kind == MEMORY, kind
        raise self._over_memory()

    async def _watched(self, decoder: _Decoder, body: bytearray) -> tuple[int, memoryview]:
        """The decoder's answer; TimeoutError past json_decode_timeout_s, _OverMemory when its
        resident memory passes json_decode_memory_bytes (looked at every WATCH_S: orjson
        crashes rather than fail cleanly at an RLIMIT_AS, which is only the backstop)."""
        decoding = asyncio.ensure_future(decoder.decode(body))
        deadline = asyncio.get_running_loop().time() + self.limits.json_decode_timeout_s
        try:
            while not (await asyncio.wait({decoding}, timeout=WATCH_S))[0]:
                if decoder.resident_bytes() > self.limits.json_decode_memory_bytes:
                    raise _OverMemory
                if asyncio.get_running_loop().time() > deadline:
                    raise TimeoutError
            return decoding.result()
        finally:
            decoding.cancel()

    def _over_memory(self) -> TooCostly:
        return TooCostly(f"the JSON body needs more than server.json_decode_memory_bytes "
                         f"({self.limits.json_decode_memory_bytes:,} bytes) to decode; send big tensors in binary form")

    async def _take(self) -> _Decoder:
        while self._idle:
            decoder = self._idle.pop()
            if decoder.process.returncode is None:
                return decoder
            await decoder.kill()  # died while idle: reaped, and replaced
        return await _Decoder.start(self.limits)

    def _failure(self, error: BaseException, decoder: _Decoder) -> BaseException:
        if isinstance(error, _OverMemory):
            log.warning("json decode over its memory bound", pid=decoder.process.pid)
            return self._over_memory()
        if isinstance(error, TimeoutError):
            log.warning("json decode timed out", pid=decoder.process.pid)
            return TooCostly(f"the JSON body took longer than server.json_decode_timeout_s "
                             f"({self.limits.json_decode_timeout_s:g} s) to decode; send big tensors in binary form")
        if isinstance(error, (ConnectionError, asyncio.IncompleteReadError)):
            log.warning("json decoder exited while decoding", pid=decoder.process.pid, status=decoder.process.returncode)
            return InferdError(ErrorCode.UNAVAILABLE, "the JSON decoder process exited while decoding this request; "
                               "retry", retry_after_s=1)
        return error  # cancelled (the caller left), or a bug: the error middleware reports it

    async def close(self) -> None:
        """Every decoder process ended and reaped (the daemon is stopping)."""
        decoders, self._idle = [*self._idle, *self._busy], []
        await asyncio.gather(*(decoder.kill() for decoder in decoders))
