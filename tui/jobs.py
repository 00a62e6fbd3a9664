"""Engine jobs: an engine generator in a thread worker, its events shown a few times a second.

``JobScreen`` is the one place the Training, Evaluate and Classify screens get their worker
plumbing from. ``start_job`` runs an engine generator in a thread worker (``thread=True,
exclusive=True, exit_on_error=False``, the screen's group) and passes the worker's
``cancelled_event`` as the engine's ``stop``. Every event goes into an ``EventPump``, which
posts at most one ``EventsReady`` per ``INTERVAL`` (sooner for the rare events that change
what the screen shows): posting never blocks the worker, and a message posted early in a
quiet spell is held back on the UI side until its interval ends, so nothing waits for a next
event that may be long in coming. The screen gets each batch in ``apply_events``, the tail
when the worker ends, and then ``job_finished``. ``stop_job`` is the engine's cooperative
stop (its closing event still arrives); cancelling the worker (a new job, the app closing)
drops whatever the engine yields afterwards.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from functools import partial
from typing import Any, Callable, Iterable

from textual import on
from textual.message import Message
from textual.message_pump import MessagePump
from textual.screen import Screen
from textual.worker import Worker, WorkerState, get_current_worker

from core import events as ev

INTERVAL = 0.15  # seconds between redraws: a few a second, however fast batches come

FINISHED = (WorkerState.SUCCESS, WorkerState.ERROR, WorkerState.CANCELLED)

Engine = Callable[[threading.Event], Iterable[Any]]
"""An engine call waiting for its ``stop`` event: ``lambda stop: train(config, stop=stop)``."""


def finished_listing(event: Worker.StateChanged, listing: Worker[Any] | None, notify: Callable[..., object]) -> list[Any] | None:
    """The rows of the run-listing worker ``listing`` once it ended (``[]`` after an error, which is notified).

    None for any other worker's state change, so a handler returns at once. The Runs screen
    and the model menu both list runs in a thread worker and take the result through this.
    """
    if event.worker is not listing or event.state not in (WorkerState.SUCCESS, WorkerState.ERROR):
        return None
    if event.state == WorkerState.ERROR:
        notify(f"cannot list the runs: {event.worker.error}", severity="error")
    return event.worker.result or []


@dataclass
class EventsReady(Message):
    """Engine events are waiting in ``pump``; drain them at ``due`` (the pump's clock) or later."""

    pump: EventPump
    due: float = float("-inf")


def is_urgent(event: Any) -> bool:
    """Events worth showing at once: all but mid-epoch progress ticks."""
    if isinstance(event, ev.BatchEnded):
        return event.batch == event.batches
    if isinstance(event, ev.EvalBatchEnded):
        return event.batch == event.batches
    return True


class EventPump:
    """A thread-safe buffer that posts ``EventsReady`` to ``target`` at most every ``interval``.

    One message is outstanding at a time (until ``drain``); it says when it is due, ``interval``
    after the last drain, or at once for an urgent event (which posts a second message only
    when the outstanding one is due later).
    """

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
        self._due: float | None = None  # of the outstanding message
        self._last = float("-inf")  # the last drain

    def put(self, event: Any) -> None:
        """Buffer ``event``; post a message unless an outstanding one will deliver it in time."""
        with self._lock:
            self._pending.append(event)
            now = self.clock()
            due = now if is_urgent(event) else max(now, self._last + self.interval)
            if self._due is not None and self._due <= due:
                return
            self._due = due
        self.target.post_message(EventsReady(self, due))

    def drain(self) -> list[Any]:
        """Every buffered event, oldest first; the buffer is left empty."""
        with self._lock:
            items, self._pending = self._pending, []
            self._due = None
            self._last = self.clock()
            return items


class JobScreen(Screen[None]):
    """A screen that runs engine generators, one at a time, and shows their events.

    Subclasses override ``apply_events`` (a batch of events, oldest first) and
    ``job_finished`` (the worker ended: ``worker.state`` says how; every event it delivered
    has been applied).
    """

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.worker: Worker[None] | None = None
        self.stop_requested = False  # stop_job was called for the current job
        self._pump: EventPump | None = None  # of the current job; None once it has ended

    @property
    def running(self) -> bool:
        """True from ``start_job`` until ``job_finished`` has run."""
        return self._pump is not None

    def start_job(self, engine: Engine, *, name: str, group: str, finish_on_cancel: bool = False) -> Worker[None]:
        """Run ``engine(stop)`` in a thread worker, cancelling this screen's job in ``group``.

        ``finish_on_cancel``: when the worker is cancelled, keep iterating so the engine
        reaches its own stop (training keeps a checkpoint) instead of closing it at once.
        """
        self.stop_requested = False
        self._pump = pump = EventPump(self)
        # run_worker, not @work: the decorator fixes name and group per method, and these are
        # the caller's (worker names appear in error reports).
        self.worker = self.run_worker(
            partial(self._feed, engine, pump, finish_on_cancel),
            name=name, group=group, thread=True, exclusive=True, exit_on_error=False,
        )
        return self.worker

    def stop_job(self) -> bool:
        """Ask the engine to stop at its next batch boundary; False when nothing is running."""
        if self.worker is None or not self.running:
            return False
        self.stop_requested = True
        self.worker.cancelled_event.set()  # the engine's ``stop``; the worker itself runs on to the closing event
        return True

    def _feed(self, engine: Engine, pump: EventPump, finish_on_cancel: bool) -> None:
        """The worker: every event into ``pump`` until the engine ends or the worker is cancelled.

        Cancelling a thread worker does not stop its thread: closing the generator ends the
        engine at the event it is on, instead of whenever it next checks its ``stop``.
        """
        worker = get_current_worker()
        events = engine(worker.cancelled_event)
        try:
            for event in events:
                if worker.is_cancelled:
                    if not finish_on_cancel:
                        break
                    continue  # nothing after a cancel reaches the screen
                pump.put(event)
        finally:
            close = getattr(events, "close", None)
            if close is not None:
                close()

    def apply_events(self, events: list[Any]) -> None:
        """Show a batch of the current job's events."""

    def job_finished(self, worker: Worker[None]) -> None:
        """The current job's worker ended (success, error or cancelled)."""

    def _flush(self, pump: EventPump) -> None:
        if pump is self._pump:
            events = pump.drain()
            if events:
                self.apply_events(events)

    @on(EventsReady)
    def _events_ready(self, message: EventsReady) -> None:
        if message.pump is not self._pump:
            return  # a job that has ended or was replaced
        wait = message.due - message.pump.clock()
        if wait > 0:
            self.set_timer(wait, partial(self._flush, message.pump))
        else:
            self._flush(message.pump)

    @on(Worker.StateChanged)
    def _job_state_changed(self, event: Worker.StateChanged) -> None:
        # Only this screen's current job; a worker posts this after every EventsReady it posted.
        if event.worker is not self.worker or event.state not in FINISHED or self._pump is None:
            return
        if event.state != WorkerState.CANCELLED:
            self._flush(self._pump)  # the tail
        self._pump = None
        self.job_finished(event.worker)
