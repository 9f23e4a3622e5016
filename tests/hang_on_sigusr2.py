"""`inferd`, with SIGUSR2 blocking its event loop for good while the process lives on: how the
watchdog tests get a hung loop on demand. Test scaffolding, never shipped: the handler is a
plain Python signal handler, which runs in the main thread, the event loop's.

    python tests/hang_on_sigusr2.py serve [inferd serve flags]
"""

import signal
import sys
import threading

from inferd.daemon.cli import main


def _hang(signum, frame) -> None:
    threading.Event().wait()


if __name__ == "__main__":
    signal.signal(signal.SIGUSR2, _hang)
    sys.exit(main())
