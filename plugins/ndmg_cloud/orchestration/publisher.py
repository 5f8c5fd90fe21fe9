"""The XComs that name a scan's job, written by a triggerer without slowing its SubmitJobs.

A trigger talks to the triggerer's supervisor one request at a time, and the supervisor
answers about one request per turn of its loop (measured: about 65 a second with 1,000
triggers). A new scan needs none before its SubmitJob but its run's items and configuration,
read once for the triggers starting together (its SubmitJob record is on S3:
``submit_trigger``), and three after it: ``batch_job`` and the Batch link (the provider's
parts and the URL the UI shows), for ``verify_and_report`` and the user, while the job runs.
Written at once, the three of every scan would queue in front of the next scans' requests
(a record's two did, before it moved to S3).

So each triggerer (event loop) has one ``Publisher``:

- a trigger holds ``submitting()`` from its start to its SubmitJob's answer; the publisher
  writes only while no trigger has for ``QUIET_SECONDS`` (the next triggers of a burst start a
  moment apart), one write at a time, checking again before every write, so a new scan's
  requests wait behind at most one write, not thousands. A write waits at most
  ``DELAY_MAX_SECONDS`` for a burst that does not end;
- a trigger hands its XComs over (``publish``) and keeps polling its job;
- a job that ends first takes its XComs back (``Writes.take_back``): what is not yet written
  rides on its ``TaskSuccessEvent``, which the supervisor writes as it ends the task, with no
  request of the trigger's. A write already under way is never cut short (its request would
  be left half-answered on the shared channel).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

QUIET_SECONDS = 1.0  # no submission pending for this long: the burst is over
DELAY_MAX_SECONDS = 120.0  # a scan's XComs wait at most this long for a burst to end

log = logging.getLogger(__name__)


class Writes:
    """One scan's XComs, handed to the publisher; written in order, each at most once."""

    def __init__(self, ti: Any, xcoms: dict[str, Any]) -> None:
        self.ti = ti
        self.left = dict(xcoms)  # not yet written
        self.taken = False  # its job ended: the trigger writes or carries what is left
        self.writing = False
        self.written = asyncio.Event()  # no write of these is under way any more, nor will be
        self.queued_at = time.monotonic()

    def over(self) -> bool:
        """Nothing (more) for the publisher to write."""
        return self.taken or not self.left

    async def take_back(self) -> dict[str, Any]:
        """Stop the publisher's writes of these; what it has not written (after the one under
        way, if any)."""
        self.taken = True
        if self.writing:
            await self.written.wait()
        return dict(self.left)


class Publisher:
    """See the module docstring; one per event loop (``publisher()``)."""

    def __init__(self, push: Callable[..., None]) -> None:
        self.push = push  # (ti, *, key, value): a sync SDK write, through the triggerer's portal
        self.pending = 0
        self.idle_since = -float("inf")  # time.monotonic() the last submission ended
        self.queue: collections.deque[Writes] = collections.deque()
        self.queued = asyncio.Event()
        self.writer: asyncio.Future[None] | None = None

    @contextlib.contextmanager
    def submitting(self) -> Iterator[None]:
        """Held by a trigger until its SubmitJob is answered (or it submits nothing)."""
        self.pending += 1
        try:
            yield
        finally:
            self.pending -= 1
            if not self.pending:
                self.idle_since = time.monotonic()

    async def settled(self, at_most: float = DELAY_MAX_SECONDS) -> None:
        """Return once no submission has been pending for ``QUIET_SECONDS``, or after
        ``at_most`` seconds. Plain sleeps only: the writer runs in a greenback portal, where a
        cancelled ``asyncio.wait_for`` was seen to hang the loop's shutdown."""
        deadline = time.monotonic() + at_most
        while (left := deadline - time.monotonic()) > 0:
            quiet_for = time.monotonic() - self.idle_since
            if not self.pending and quiet_for >= QUIET_SECONDS:
                return
            await asyncio.sleep(min(left, QUIET_SECONDS if self.pending else QUIET_SECONDS - quiet_for))

    def publish(self, ti: Any, xcoms: dict[str, Any]) -> Writes:
        """Queue ``xcoms`` of ``ti`` for writing (see the module docstring)."""
        writes = Writes(ti, xcoms)
        self.queue.append(writes)
        self.queued.set()
        if self.writer is None or self.writer.done():
            self.writer = asyncio.ensure_future(self._write())
        return writes

    async def _write(self) -> None:
        import greenback  # the triggerer's way for sync SDK calls (XCom.set) in a task of their own

        await greenback.ensure_portal()
        while True:
            while not self.queue:
                self.queued.clear()
                await self.queued.wait()
            writes = self.queue[0]
            while not writes.over():
                await self.settled(at_most=max(0.0, writes.queued_at + DELAY_MAX_SECONDS - time.monotonic()))
                if writes.over():  # its job ended meanwhile
                    break
                key, value = next(iter(writes.left.items()))
                writes.writing = True
                try:
                    self.push(writes.ti, key=key, value=value)
                    del writes.left[key]
                except Exception:  # the trigger writes or carries it when its job ends
                    log.exception("Could not write XCom %s of %s: left to its trigger", key, getattr(writes.ti, "map_index", "?"))
                    break
                finally:
                    writes.writing = False
            self.queue.popleft()
            writes.written.set()


_PUBLISHERS: dict[asyncio.AbstractEventLoop, Publisher] = {}


def publisher(push: Callable[..., None]) -> Publisher:
    """The publisher of the running event loop (this triggerer's), made on first use."""
    loop = asyncio.get_running_loop()
    if loop not in _PUBLISHERS:
        for stale in [other for other in _PUBLISHERS if other.is_closed()]:
            del _PUBLISHERS[stale]
        _PUBLISHERS[loop] = Publisher(push)
    return _PUBLISHERS[loop]
