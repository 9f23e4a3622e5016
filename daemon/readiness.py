"""Readiness, the one source of truth that HTTP, gRPC, the Unix socket and a balancer's health
checks derive from; it is not liveness (the process answers) nor whether work is accepted.

    started   the initial load of the models directory is done (systemd's READY=1)
    leaving   SIGTERM came: not ready, so that balancers take the daemon out of their pools,
              while it serves on for server.drain_delay_s (their checks take that long to notice)
    draining  new work is refused and what was accepted is answered

`ready` also needs each of server.ready_models to have a READY version (`required`, from the
composition root), so that a balancer waits for the models that matter.
"""

from __future__ import annotations

from collections.abc import Callable


class ServerState:
    def __init__(self, required: Callable[[], bool] = lambda: True) -> None:
        self.required = required  # whether the models the server's readiness waits for are READY
        self.started = False
        self.leaving = False
        self.draining = False

    @property
    def serving(self) -> bool:
        """Inference and the server's other calls are accepted (not ready while leaving)."""
        return self.started and not self.draining

    @property
    def up(self) -> bool:
        """Started and not stopping: what a model's own readiness adds its state to."""
        return self.serving and not self.leaving

    @property
    def ready(self) -> bool:
        return self.up and self.required()

    @property
    def closing(self) -> bool:
        """From SIGTERM on: a connection is closed after its answer (HTTP's Connection: close)."""
        return self.leaving or self.draining
