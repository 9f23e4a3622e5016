"""The one in-process API every front-end calls. All request validation happens here, once.

Inference has one primitive, `submit`: it validates a request, queues it (or runs it through
its pipeline's steps) and hands the outcome to a callback, counting it once; the caller may
withdraw it. `infer` is the thin awaitable wrapper around it for callers with a task of their
own (HTTP, gRPC, a pipeline's steps); the Unix socket calls `submit` directly, so that a reply
goes out in the loop turn its outputs arrive, with no task per request.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import structlog

import inferd
from inferd.common.errors import ErrorCode, InferdError, clip, invalid, unexpected
from inferd.config.model import MODEL_NAME
from inferd.daemon import classification
from inferd.daemon.cuda_memory import CudaSharedMemory
from inferd.daemon.extensions import EXTENSIONS
from inferd.daemon.load_request import parse_load
from inferd.daemon.models import handover, upload
from inferd.daemon.models.repository import ModelRepository
from inferd.daemon.models.version import ModelState, ModelVersion
from inferd.daemon.readiness import ServerState
from inferd.daemon.requests import InferRequest, InferResponse
from inferd.daemon.sequence_routing import draining_holder
from inferd.daemon.shared_memory import SystemSharedMemory
from inferd.daemon.triton_view import triton_config
from inferd.daemon.validation import check_request
from inferd.scheduler.streams import ResponseStream

log = structlog.get_logger("inferd.dataplane")

Done = Callable[[InferResponse | InferdError], None]
Respond = Callable[[InferResponse, Callable[[], None]], None]  # a stream's response, and its ack


def shutting_down() -> InferdError:
    """The answer of every request the drain did not finish (and of every new one)."""
    return InferdError(ErrorCode.UNAVAILABLE, "the server is shutting down")


def _count(mv: ModelVersion, request: InferRequest, error: InferdError | None, protocol: str, started: float) -> None:
    """A finished request in the metrics (and an internal failure in the log)."""
    observer = mv.observer
    if error is None:
        return observer.request_done(protocol, "OK", time.perf_counter() - started)
    if error.code is ErrorCode.RESOURCE_EXHAUSTED:
        observer.rejected("queue_full")
    elif error.code is ErrorCode.INTERNAL:
        log.error("inference failed", model=mv.name, version=mv.version, request_id=request.id, error=error.message)
    observer.request_done(protocol, error.code.name, time.perf_counter() - started)


class _Call:
    """One inference in flight: answers its caller once, or is withdrawn by it (then the
    caller hears nothing), and is counted once either way. Its ticket refers back to it (the
    ticket's callback is `finish`): both ends drop that reference, so that a finished request
    is freed at once by reference counting and never waits for the cyclic garbage collector
    (a cycle per request made full collections, and 30-50 ms stalls, at 10,000 requests/s)."""

    __slots__ = ("_mv", "_request", "_protocol", "_done", "_started", "_live", "ticket", "task", "answered",
                 "classify")

    def __init__(self, mv: ModelVersion, request: InferRequest, protocol: str, done: Done, live: set):
        self._mv, self._request, self._protocol, self._done = mv, request, protocol, done
        self._live = live  # the data plane's unanswered calls, which it answers at shutdown
        self._started = time.perf_counter()
        self.ticket = None  # its place in the queue, or
        self.task: asyncio.Task | None = None  # its pipeline's run
        self.answered = False
        self.classify = None  # (output, k) pairs the caller wants as top-k classes (daemon/classification.py)

    def finish(self, outcome) -> None:
        """The request's outputs, or an InferdError (the queue's and a pipeline's answer)."""
        if self.answered:
            return
        self.answered = True
        self.ticket = self.task = None
        self._live.discard(self)
        mv, request = self._mv, self._request
        if self.classify is not None and not isinstance(outcome, InferdError) and outcome:  # (a stream's end has none)
            outcome = classification.of_version(mv, outcome, self.classify)
        error = outcome if isinstance(outcome, InferdError) else None
        try:
            # Counted after the reply is written: the metrics are off the caller's critical path.
            self._done(error or InferResponse(mv.name, mv.version, outcome, request.id))
        except Exception as e:  # the caller's bug: logged; the other callers of its batch are still answered
            unexpected(e, "answering a request failed", model=mv.name, version=mv.version, request_id=request.id)
        finally:
            _count(mv, request, error, self._protocol, self._started)

    def abandon(self, error: InferdError) -> None:
        """Shutdown: answer `error` now and take the request out of its queue, so that neither
        its stuck batch's end nor its worker's death runs it again."""
        ticket, task = self.ticket, self.task
        self.finish(error)
        if ticket is not None:
            self._mv.queue.withdraw(ticket)
        if task is not None:
            task.cancel()

    def refused(self, error: InferdError) -> None:
        """Refused before it was queued (the caller gets the error raised)."""
        self.answered = True
        _count(self._mv, self._request, error, self._protocol, self._started)

    def withdraw(self) -> None:
        """The caller went away: a queued request leaves its queue, a pipeline stops."""
        if not self.answered:
            self.answered = True
            self._live.discard(self)
            ticket, task, self.ticket, self.task = self.ticket, self.task, None, None
            if ticket is not None:
                self._mv.queue.withdraw(ticket)
            if task is not None:
                task.cancel()
            self._mv.observer.request_done(self._protocol, "CANCELLED", time.perf_counter() - self._started)

    def pipeline_done(self, task: asyncio.Task) -> None:
        if task.cancelled():
            return  # withdrawn: counted there
        error = task.exception()
        if error is None:
            self.finish(task.result())
        else:
            self.finish(unexpected(error, "pipeline failed", model=self._mv.name, request_id=self._request.id))


class DataPlane:
    def __init__(self, repository: ModelRepository, state: ServerState, accept_model_files: bool = False,
                 name: str = "inferd"):
        self.repository = repository
        self.name = name  # server.name: server metadata's name
        self.state = state
        self.accept_model_files = accept_model_files  # models.accept_model_files: load requests may carry files
        self._uploads: set[str] = set()  # models whose files a load request is writing
        self._live: set[_Call] = set()  # inferences not answered yet
        self._closing = asyncio.Event()  # set by answer_all_shutting_down()
        self.system_shared_memory = SystemSharedMemory()  # regions clients registered (shared_memory.py)
        self.cuda_shared_memory = CudaSharedMemory(self.system_shared_memory)  # (cuda_memory.py)

    # -- inference ---------------------------------------------------------------------------

    def submit(self, name: str, version: str, request: InferRequest, protocol: str, done: Done) -> Callable[[], None]:
        """Run `request` on model `name` (`version`, or the newest READY one). `done` gets the
        InferResponse or an InferdError once, straight from the queue's callbacks, possibly
        before this returns (a deadline already passed). A request refused at once raises
        InferdError here instead. Returns the function that withdraws the request (its caller
        went away); `done` is then not called."""
        mv = self._serving(name, version, request)
        if not isinstance(mv, ModelVersion):
            return self._later(mv, lambda mv: self._submit(mv, request, protocol, done), done)
        return self._submit(mv, request, protocol, done)

    def submit_stream(self, name: str, version: str, request: InferRequest, protocol: str, on_response: Respond,
                      done: Done) -> Callable[[], None]:
        """`submit` for a caller that takes 0..N responses (a stream). A decoupled model's
        responses go to `on_response(response, ack)` as the model sends them; the caller calls
        `ack()` once it has written one (its transport's buffer drained): a model runs at most
        streams.WINDOW responses ahead of its caller. `done` gets the end: an InferResponse
        (an ordinary model's one response; a decoupled model's has no outputs) or an
        InferdError. Withdrawing also stops a decoupled model's run."""
        mv = self._serving(name, version, request)
        if not isinstance(mv, ModelVersion):
            return self._later(mv, lambda mv: self._stream(mv, request, protocol, on_response, done), done)
        return self._stream(mv, request, protocol, on_response, done)

    def _stream(self, mv: ModelVersion, request: InferRequest, protocol: str, on_response: Respond,
                done: Done) -> Callable[[], None]:
        if not mv.metadata.decoupled:
            return self._submit(mv, request, protocol, done)
        failed: list[InferdError] = []  # a response that could not be classified: the stream ends with it

        def respond(outputs: dict) -> None:
            plan = call.classify  # (planned when the request was checked)
            outputs = outputs if plan is None else classification.of_version(mv, outputs, plan)
            if isinstance(outputs, InferdError):
                failed.append(outputs)
                return stream.cancel()
            on_response(InferResponse(mv.name, mv.version, outputs, request.id), stream.ack)
        stream = request.stream = ResponseStream(respond)

        def finished(outcome) -> None:
            stream.cancel()  # (a deadline passed while it ran: the model stops too)
            done(failed[0] if failed and not isinstance(outcome, InferdError) else outcome)

        call = self._call(mv, request, protocol, finished)

        def withdraw_stream() -> None:
            stream.cancel()
            call.withdraw()
        return withdraw_stream

    async def infer(self, name: str, version: str, request: InferRequest, protocol: str) -> InferResponse:
        """`submit` for a caller that awaits; raises InferdError. Cancelling it withdraws the request."""
        mv = self._serving(name, version, request)
        if not isinstance(mv, ModelVersion):
            mv = await mv
        return await self._infer(mv, request, protocol)

    async def _infer(self, mv: ModelVersion, request: InferRequest, protocol: str) -> InferResponse:
        future = asyncio.get_running_loop().create_future()
        withdraw = self._submit(mv, request, protocol, lambda outcome: future.done() or future.set_result(outcome))
        try:
            outcome = await future
        except asyncio.CancelledError:
            withdraw()
            raise
        if isinstance(outcome, InferdError):
            raise outcome
        return outcome

    def _later(self, waiting: Awaitable[ModelVersion], start: Callable[[ModelVersion], Callable[[], None]],
               done: Done) -> Callable[[], None]:
        """A request waiting for its model's next version (daemon/models/handover.py): started
        once that one serves, or answered the error. Returns the function that withdraws it."""
        task = asyncio.ensure_future(waiting)
        started: list[Callable[[], None]] = []  # the started request's withdraw

        def begin(task: asyncio.Task) -> None:
            if task.cancelled():
                return  # withdrawn
            try:
                started.append(start(task.result()))
            except Exception as e:  # refused, or the wait ended without a version
                done(unexpected(e, "waiting for a model version failed"))

        def withdraw() -> None:
            task.cancel()
            for stop in started:
                stop()
        task.add_done_callback(begin)
        return withdraw

    def _submit(self, mv: ModelVersion, request: InferRequest, protocol: str, done: Done) -> Callable[[], None]:
        return self._call(mv, request, protocol, done).withdraw

    def _call(self, mv: ModelVersion, request: InferRequest, protocol: str, done: Done) -> _Call:  # checked, queued
        call = _Call(mv, request, protocol, done, self._live)
        try:
            rows, shape_key = check_request(mv, request)
            if request.stream is None and mv.metadata.decoupled:
                raise invalid(f"model {clip(mv.name)} is decoupled (0..N responses per request): use a stream "
                              "(gRPC ModelStreamInfer, HTTP generate or generate_stream, the Unix socket's streams)")
            if request.output_parameters:
                call.classify = classification.plan(request.output_parameters, mv.metadata.outputs, rows,
                                                    mv.max_batch_size > 0)
            if mv.pipeline is not None:  # its steps await one another: that takes a task
                call.task = asyncio.ensure_future(mv.pipeline.run(request, self._run_step))
                call.task.add_done_callback(call.pipeline_done)
            else:
                ticket = mv.queue.enqueue(request, rows, shape_key, call.finish)
                if not call.answered:  # (an expired deadline is answered inside enqueue)
                    call.ticket = ticket
        except InferdError as e:
            call.refused(e)
            raise
        if not call.answered:
            self._live.add(call)
        return call

    def answer_all_shutting_down(self) -> int:
        """Shutdown, after the drain: every inference still unanswered (its batch stuck in a
        worker, say) and every awaited repository call is answered UNAVAILABLE now, so that its
        front-end can write the answer before it closes. Returns how many inferences."""
        self._closing.set()
        calls = list(self._live)
        for call in calls:
            call.abandon(shutting_down())
        return len(calls)

    async def _unless_shutting_down(self, work):
        """`work`'s result, or UNAVAILABLE once the daemon shuts down (a load can take minutes)."""
        task, closing = asyncio.ensure_future(work), asyncio.ensure_future(self._closing.wait())
        try:
            await asyncio.wait([task, closing], return_when=asyncio.FIRST_COMPLETED)
        finally:
            closing.cancel()
        if not task.done():
            task.cancel()
            raise shutting_down()
        return task.result()

    async def _run_step(self, step, request: InferRequest) -> dict:
        """A pipeline's step: a request to the step's model, counted under protocol "pipeline"."""
        response = await self._infer(self.repository.get_ready(step.model, step.version), request, "pipeline")
        return response.outputs

    def _serving(self, name: str, version: str, request: InferRequest) -> ModelVersion | Awaitable[ModelVersion]:
        """The version to run `request` on, or (a request naming no version while its model
        rolls back from a removed version) the wait for it. Raises InferdError."""
        if request.parameters and (self.repository.retiring or self.state.draining):  # a sequence's next request
            holder = draining_holder(self.repository, name, version, request.parameters, self.state.draining)
            if holder is not None:  # goes where its state is (daemon/sequence_routing.py)
                return holder
        if not self.state.serving:  # (while leaving: not ready, and serving on)
            raise InferdError(ErrorCode.UNAVAILABLE, "the server is not ready (starting or shutting down)")
        try:
            mv = self.repository.get_ready(name, version)
            queue = mv.queue
            if queue is None or not queue.pool.cold or not handover.cannot_start(mv):
                return mv
            return self.repository.get_ready(name, version)  # (another version, or FAILED now)
        except InferdError:
            if version or not self.repository.handover.coming(name):
                raise
            return self._successor(name, request)

    async def _successor(self, name: str, request: InferRequest) -> ModelVersion:
        """The version that takes over from a removed one, once READY (daemon/models/handover.py)."""
        waiting = asyncio.ensure_future(self.repository.handover.successor(name, request.deadline))
        try:
            return await self._unless_shutting_down(waiting)
        finally:
            waiting.cancel()

    # -- health, metadata, statistics --------------------------------------------------------

    def server_metadata(self) -> dict:
        return {"name": self.name, "version": inferd.__version__, "extensions": list(EXTENSIONS)}

    def model_ready(self, name: str, version: str = "") -> bool:
        """Raises NOT_FOUND for an unknown model or version."""
        return self.state.up and self.repository.get(name, version).state is ModelState.READY

    def model_metadata(self, name: str, version: str = "") -> dict:
        mv = self.repository.get_ready(name, version)
        versions = sorted(v.version for v in self.repository.models[name].values() if v.state is ModelState.READY)
        return {
            "name": name,
            "versions": versions,
            "platform": mv.metadata.platform,
            "inputs": [t.to_dict() for t in mv.metadata.inputs],
            "outputs": [t.to_dict() for t in mv.metadata.outputs],
        }

    def model_config(self, name: str, version: str = "") -> dict:
        """The model's configuration in the shape Triton's clients (and perf_analyzer) read."""
        return triton_config(self.repository.get_ready(name, version))

    def model_statistics(self, name: str = "", version: str = "") -> dict:
        """Triton-shaped statistics of one model version, or of every READY one."""
        if name:
            versions = [self.repository.get_ready(name, version)]
        else:
            versions = [v for v in self.repository.serving_versions() if v.state is ModelState.READY]
        return {"model_stats": [v.observer.triton_stats() for v in versions]}

    # -- the repository API ------------------------------------------------------------------

    async def repository_index(self, ready_only: bool = False) -> list[dict]:
        index = await self._unless_shutting_down(self.repository.index())
        return [row for row in index if row["state"] == ModelState.READY.value] if ready_only else index

    def _repository_call(self, name: str) -> None:
        if not self.state.up:
            raise InferdError(ErrorCode.UNAVAILABLE, "the server is not ready (starting or shutting down)")
        if not name:
            raise invalid("a model name is required")

    async def load_model(self, name: str, parameters: dict | None = None) -> None:
        """`parameters`: the load request's (daemon/load_request.py): a configuration override."""
        self._repository_call(name)
        request = parse_load(name, parameters)
        if request.files:
            await self._write_model(name, request)
        await self._unless_shutting_down(self.repository.load_model(name, request.override))

    async def _write_model(self, name: str, request) -> None:
        """A load request's model files into the models directory (daemon/models/upload.py)."""
        if not self.accept_model_files:
            raise InferdError(ErrorCode.FAILED_PRECONDITION, "model files in a load request are refused: "
                              "the server's models.accept_model_files is off")
        if not MODEL_NAME.fullmatch(name) or name.startswith("."):
            raise invalid(f"a model sent as files needs a name of [A-Za-z0-9_.-] not starting with '.', not {clip(name)}")
        upload.check_files(name, request.files)
        if name in self._uploads:
            raise InferdError(ErrorCode.FAILED_PRECONDITION, f"files for model {name!r} are being written by another load")
        self._uploads.add(name)
        try:
            await asyncio.to_thread(upload.write_model, self.repository.root, name, request.files, request.override or {})
        finally:
            self._uploads.discard(name)

    async def unload_model(self, name: str) -> None:
        self._repository_call(name)
        await self._unless_shutting_down(self.repository.unload_model(name))
