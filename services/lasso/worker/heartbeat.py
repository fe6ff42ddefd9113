"""The MPC worker's sign of life: one byte per HEARTBEAT_S on a pipe to its lasso server.

A frozen worker (stopped, or its interpreter stuck) keeps its link open, so the server
watches this pipe instead (services.lasso.worker.handle: `wait_silent`). A thread, not the
event loop, writes it, because MPyC's local work may hold the loop for seconds. Its own
module so that the worker imports neither the server's side nor its gRPC plumbing.
"""

from __future__ import annotations

import os
import threading
import time

HEARTBEAT_S = 1.0


def start_heartbeat(fd: int, interval: float = HEARTBEAT_S) -> threading.Thread:
    """A daemon thread writing one byte per `interval` to the server."""

    def beat() -> None:
        try:
            while True:
                os.write(fd, b".")
                time.sleep(interval)
        except OSError:
            return  # the server is gone; the link's end stops the run

    thread = threading.Thread(target=beat, name="heartbeat", daemon=True)
    thread.start()
    return thread
