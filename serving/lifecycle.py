"""A worker's life: its memory, whether another worker is alive, and the SIGTERM drain that keeps a model worker up
until the API worker has answered its requests in flight (docs/operations.md, "Shutdown")."""

from __future__ import annotations

import itertools
import os
import signal
import threading
import time
from collections.abc import Callable

import psutil


def rss_mb() -> float:
    return round(psutil.Process().memory_info().rss / 2**20, 1)


def worker_alive(service_name: str) -> bool:
    """Whether a sibling worker process (same parent, the ``bentoml serve`` arbiter) serves ``service_name``."""
    try:
        siblings = psutil.Process(os.getppid()).children()
    except psutil.Error:
        return False
    for sibling in siblings:
        try:
            command = sibling.cmdline()
        except psutil.Error:
            continue
        if any(a == "--service-name" and b == service_name for a, b in itertools.pairwise(command)):
            return True
    return False


def defer_sigterm(until: Callable[[], bool], bound_s: float) -> None:
    """On SIGTERM, call the handler installed now (uvicorn's graceful exit) only once ``until()`` holds or after
    ``bound_s``. A model worker calls this at start-up with "the API worker has exited": ``bentoml serve`` stops
    every worker at the same time, and a model worker that left at once would fail the API worker's requests in
    flight (503) instead of letting them drain. Must be called on the main thread."""
    original = signal.getsignal(signal.SIGTERM)

    def exit_when_done(signum: int) -> None:
        deadline = time.monotonic() + bound_s
        while not until() and time.monotonic() < deadline:
            time.sleep(0.2)
        if callable(original):
            original(signum, None)

    def on_sigterm(signum: int, frame: object) -> None:
        threading.Thread(target=exit_when_done, args=(signum,), daemon=True, name="deferred-sigterm").start()

    signal.signal(signal.SIGTERM, on_sigterm)
