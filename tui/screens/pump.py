"""Coalescing engine events from a worker thread into a few UI updates per second.

A screen's thread worker iterates an engine generator and hands every event to an
``EventPump``. The pump buffers them and posts one ``EventsReady`` message to the screen at
most every ``interval`` seconds (sooner for the rare events that change what the screen
shows: a new epoch, a finished run). Posting is non-blocking, so the worker never waits for
the UI; the screen drains the whole buffer per message, so every loss point still arrives,
and a slow timer on the screen drains whatever a quiet engine left behind.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable

from textual.message import Message
from textual.message_pump import MessagePump

from core import events as ev

INTERVAL = 0.15


@dataclass
class EventsReady(Message):
    """Engine events are waiting in ``pump``; the handler calls ``pump.drain()``."""

    pump: EventPump


def is_urgent(event: Any) -> bool:
    """Events worth showing at once: all but mid-epoch progress ticks."""
    if isinstance(event, ev.BatchEnded):
        return event.batch == event.batches
    if isinstance(event, ev.EvalBatchEnded):
        return event.batch == event.batches
    return True


class EventPump:
    """A thread-safe buffer that posts ``EventsReady`` to ``target`` a few times a second."""

    def __init__(
        self,
        target: MessagePump,
        interval: float = INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.target = target
        self.interval = interval
        self.clock = clock
        self._lock = threading.Lock()
        self._pending: list[Any] = []
        self._posted = False
        self._last = float("-inf")

    def put(self, event: Any) -> None:
        """Buffer ``event``; post a message if one is due and none is outstanding."""
        with self._lock:
            self._pending.append(event)
            now = self.clock()
            due = is_urgent(event) or now - self._last >= self.interval
            if not due or self._posted:
                return
            self._posted = True
            self._last = now
        self.target.post_message(EventsReady(self))

    def feed(self, events: Iterable[Any], cancelled: threading.Event) -> None:
        """``put`` every event of an engine generator until it ends or ``cancelled`` is set.

        Cancelling a thread worker does not stop its thread: closing the generator here ends
        the engine at the event it is on, instead of whenever it next checks its ``stop``, and
        nothing it yields after the cancel reaches the screen.
        """
        try:
            for event in events:
                if cancelled.is_set():
                    break
                self.put(event)
        finally:
            close = getattr(events, "close", None)
            if close is not None:
                close()

    def drain(self) -> list[Any]:
        """Every buffered event, oldest first; the buffer is left empty."""
        with self._lock:
            items, self._pending = self._pending, []
            self._posted = False
            return items
