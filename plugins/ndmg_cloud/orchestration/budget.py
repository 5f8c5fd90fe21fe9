"""The Batch API budget of a triggerer: every Batch call its triggers make takes a turn.

AWS Batch throttles an account's API calls (SubmitJob about 50 per second, and every other
call from the same account counts against its own rates). On the triggerer route each
scan's SubmitJob, the job-name lookups before it (ListJobs), the shared poller's
DescribeJobs and the TerminateJob of a cancelled scan are made by the triggers of a
triggerer, on one asyncio event loop. They share one budget per loop: at most
``NDMG_BATCH_API_BUDGET`` calls per second (default 50, the account's SubmitJob quota) for the
whole deployment, split evenly across its ``NDMG_TRIGGERERS`` triggerers (default 1).

Every request a paced client sends takes the next free turn and waits for it, right before it
goes out (botocore's ``before-send`` event, ``pace``): each operation, and each retry the SDK
makes of it. Turns are first come first served and ``1 / (HEADROOM * rate)`` apart: a request
leaves a few milliseconds after its turn (signing, a thread waking up, the GIL), and requests
that left late must not bunch above the rate in any one second at Batch's door (measured: at
exactly 50 turns a second, 53 calls arrived in one second). Nothing is dropped, and a
deployment never asks Batch for more than its budget.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from typing import Any

BUDGET_ENV, TRIGGERERS_ENV = "NDMG_BATCH_API_BUDGET", "NDMG_TRIGGERERS"
DEFAULT_BUDGET = 50.0  # Batch calls per second for the whole deployment
MAX_BUDGET = 1000.0  # a budget above this is a typo, not a quota
HEADROOM = 0.9  # turns at 90 % of the rate: late requests cannot bunch above it (module docstring)


def _number(env: str, default: float, what: str, limit: float) -> float:
    raw = os.environ.get(env, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = 0.0
    if not 0 < value <= limit:
        raise ValueError(f"{env}={raw!r} is not {what}: give a number above 0 and at most {limit:g}")
    return value


def calls_per_second() -> float:
    """This triggerer's share of the deployment's Batch API budget."""
    budget = _number(BUDGET_ENV, DEFAULT_BUDGET, "a number of Batch API calls per second", MAX_BUDGET)
    triggerers = int(_number(TRIGGERERS_ENV, 1, "a count of triggerers", 1000))
    return budget / max(1, triggerers)


class ApiBudget:
    """Turns for Batch calls, ``rate`` per second, for one triggerer (see the module docstring).

    A call reserves the next free turn and waits for it right before it is made: an async
    call on the event loop (``turn``), a blocking one in its own thread (``wait``, so a queue
    of threads, or a loop that stalled, cannot release a burst of calls whose turns passed)."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.next_turn = 0.0  # time.monotonic() of the next free turn
        self.calls = 0
        self._lock = threading.Lock()

    def _reserve(self) -> float:
        """Seconds until this call's turn."""
        with self._lock:
            now = time.monotonic()
            mine = max(now, self.next_turn)
            self.next_turn = mine + 1.0 / (HEADROOM * self.rate)
            self.calls += 1
            return mine - now

    async def turn(self) -> None:
        """Wait for this call's turn (on the event loop)."""
        wait = self._reserve()
        if wait > 0:
            await asyncio.sleep(wait)

    def wait(self) -> None:
        """Wait for this call's turn (in the thread that makes the call)."""
        wait = self._reserve()
        if wait > 0:
            time.sleep(wait)


_BUDGETS: dict[asyncio.AbstractEventLoop, ApiBudget] = {}
PACED = "ndmg-batch-api-budget"  # the before-send handler's unique id: a client is paced once


def api_budget() -> ApiBudget:
    """The budget of the running event loop (this triggerer's), made on first use."""
    loop = asyncio.get_running_loop()
    budget = _BUDGETS.get(loop)
    if budget is None:
        for stale in [other for other in _BUDGETS if other.is_closed()]:
            del _BUDGETS[stale]
        budget = _BUDGETS[loop] = ApiBudget(calls_per_second())
    return budget


def pace(client: Any, budget: ApiBudget | None = None) -> Any:
    """``client`` (a botocore or aiobotocore Batch client), with every request it sends,
    retries included, waiting for its turn in ``budget`` (the running loop's by default)
    right before it goes out. A botocore client waits in the thread that makes the call; an
    aiobotocore one on the event loop."""
    from aiobotocore.client import AioBaseClient

    budget = budget or api_budget()
    handler: Any
    if isinstance(client, AioBaseClient):

        async def handler(**_: Any) -> None:
            await budget.turn()

    else:

        def handler(**_: Any) -> None:
            budget.wait()

    client.meta.events.register("before-send.batch", handler, unique_id=PACED)
    return client
