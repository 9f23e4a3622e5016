"""ServerState: one readiness for every front-end, and what a stopping daemon still serves."""

from __future__ import annotations

from inferd.daemon.readiness import ServerState


def test_the_states_of_a_daemons_life():
    required = {"loaded": True}
    state = ServerState(required=lambda: required["loaded"])
    seen = []
    for step in ("new", "started", "models missing", "models back", "leaving", "draining"):
        if step == "started":
            state.started = True
        elif step == "models missing":
            required["loaded"] = False
        elif step == "models back":
            required["loaded"] = True
        elif step == "leaving":
            state.leaving = True
        elif step == "draining":
            state.draining = True
        seen.append((step, state.serving, state.up, state.ready, state.closing))
    assert seen == [
        # step              serving  up     ready  closing
        ("new",             False,  False, False, False),
        ("started",         True,   True,  True,  False),
        ("models missing",  True,   True,  False, False),  # server.ready_models: not ready, serving
        ("models back",     True,   True,  True,  False),
        ("leaving",         True,   False, False, True),   # SIGTERM: not ready, serving on, closing connections
        ("draining",        False,  False, False, True),
    ]


def test_the_default_requires_nothing():
    state = ServerState()
    state.started = True
    assert state.ready
