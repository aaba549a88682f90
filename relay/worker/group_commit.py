"""Group commit: a round's outcomes written together, in one transaction.

The sending threads hand each answered request's outcome to the round's :class:`GroupCommit`;
the thread that runs the round (the dispatcher's) writes what has gathered in one transaction
(:meth:`relay.outbox.store.Outbox.finish_many`), each row still guarded by its own lease token.
It writes when any of these comes first:

- ``max_rows`` outcomes are waiting;
- the oldest has waited ``max_hold`` seconds (under rate limits a round's slots spread over a
  second: its outcomes go out a few times a second, not once at its end);
- a waiting outcome's lease comes within ``lease_margin`` (plus ``ahead``, the longest the
  writer may be busy before it looks again) of its end: an outcome is written while its claim
  still holds the row, never after another worker could have claimed it;
- the round is over.

What a kill costs: a worker killed mid-round loses the outcomes not yet written — at most
those of one round (``dispatch_batch`` rows per destination), and fewer in practice: at most
``max_rows``, or ``max_hold`` seconds' worth, plus the requests in flight. Each of those rows
is sent again when its lease ends (the claim counted the attempt, so a row whose deliveries
keep killing the worker still runs out of attempts); Servoki drops the resend by ``event_id``,
DataLook counts it twice, so its double counts after a kill stay bounded by one round.

A write that fails while the database restarts is held and tried again with backoff, the way
:meth:`relay.worker.delivery.Dispatcher._persist` holds one outcome: for ``patience`` seconds
from the first failure, never past the earliest lease in the batch; meanwhile the round sends
nothing more. A batch the database refuses for its data goes one by one through ``one_by_one``
(the per-row path, which records a refused answer as ``UNSTORABLE``), so the refusal stays with
its row.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.exc import SQLAlchemyError

from relay.destinations.outcome import Outcome
from relay.outbox.outcomes import Finish
from relay.outbox.store import Claim, Outbox, refused_for_data

log = logging.getLogger("relay.delivery")


@dataclass(frozen=True)
class Waiting:
    """One answered request whose outcome is not written yet."""

    claim: Claim
    outcome: Outcome
    finish: Finish
    since: float
    """``time.monotonic()`` when it was handed over."""


Account = Callable[[Claim, Outcome, Finish, datetime | None], None]
"""Logs and counts one outcome once its write is known (its time, or None: lease lost)."""


class GroupCommit:
    """The outcomes of one round, gathered by its sending threads and written together."""

    def __init__(
        self,
        outbox: Outbox,
        trouble: threading.Event,
        *,
        account: Account,
        one_by_one: Callable[[Claim, Outcome], bool],
        lease_margin: float,
        patience: float,
        max_rows: int = 200,
        max_hold: float = 0.2,
    ) -> None:
        self.outbox = outbox
        self.trouble = trouble
        """The round's: set while writes fail, so the round sends nothing more."""
        self.account = account
        self.one_by_one = one_by_one
        self.lease_margin = lease_margin
        self.patience = patience
        self.max_rows = max_rows
        self.max_hold = max_hold
        self.written: dict[int, bool] = {}
        """Claim id → whether its outcome was written (False: its lease was lost)."""
        self._waiting: list[Waiting] = []
        self._earliest_lease = float("inf")
        self._changed = threading.Condition()
        self._running = 0
        self._give_up_at: float | None = None

    # -- the sending threads -------------------------------------------------------------

    def add(self, claim: Claim, outcome: Outcome, finish: Finish) -> None:
        """Hand over one answered request's outcome; the round's thread writes it."""
        with self._changed:
            self._waiting.append(Waiting(claim, outcome, finish, time.monotonic()))
            self._earliest_lease = min(self._earliest_lease, claim.lease_deadline)
            if self._due(time.monotonic(), 0.0):
                self._changed.notify()

    def started(self) -> None:
        """One more send is under way (see :meth:`wait`)."""
        with self._changed:
            self._running += 1

    def finished(self, *_: object) -> None:
        """A send is over (a future's done callback)."""
        with self._changed:
            self._running -= 1
            self._changed.notify()

    # -- the round's thread --------------------------------------------------------------

    def wait(self, *, writes: bool = True) -> bool:
        """Block until a write is due or every send is over; False once every send is over.
        ``writes=False``: only until every send is over (the round failed: nothing is due)."""
        with self._changed:
            while self._running > 0:
                now = time.monotonic()
                if writes and self._due(now, 0.0):
                    return True
                self._changed.wait(timeout=self._due_in(now) if writes else None)
            return False

    def write_if_due(self, ahead: float = 0.0) -> None:
        """Write what is waiting if a write is due now, or would be within ``ahead`` s."""
        with self._changed:
            due = self._due(time.monotonic(), ahead)
        if due:
            self.write()

    def write(self) -> None:
        """Write every waiting outcome in one transaction; raise once the outbox failed for
        longer than the patience (those outcomes are lost: their rows are sent again when
        their leases end)."""
        with self._changed:
            batch, self._waiting = self._waiting, []
            self._earliest_lease = float("inf")
        if not batch:
            return
        pause = 0.2
        while True:
            try:
                times = self.outbox.finish_many([item.finish for item in batch])
            except Exception as exc:
                if refused_for_data(exc) is not None:
                    self._write_one_by_one(batch, exc)
                    return
                if not isinstance(exc, SQLAlchemyError):
                    raise  # a bug, not the database
                pause = self._hold(batch, exc, pause)
                continue
            self.trouble.clear()
            self._give_up_at = None
            for item, at in zip(batch, times, strict=True):
                self.written[item.claim.id] = at is not None
                self.account(item.claim, item.outcome, item.finish, at)
            return

    # -- helpers -------------------------------------------------------------------------

    def _hold(self, batch: list[Waiting], exc: SQLAlchemyError, pause: float) -> float:
        """Wait before trying ``batch`` again; raise once that would pass the patience or a
        lease. Returns the next pause."""
        self.trouble.set()
        now = time.monotonic()
        if self._give_up_at is None:
            self._give_up_at = now + self.patience
        # Holding ends before a lease does: after it, another worker may claim the row and
        # send the event again while its outcome still waits here.
        earliest = min(item.claim.lease_deadline for item in batch)
        give_up = min(self._give_up_at, earliest - self.lease_margin / 2)
        if now + pause > give_up:
            log.error(
                "could not record the outcomes of %d events for %.0fs (%s): they will be sent "
                "again when their leases end",
                len(batch),
                self.patience,
                type(exc).__name__,
            )
            raise exc
        log.warning(
            "recording the outcomes of %d events failed (%s); trying again in %.1fs",
            len(batch),
            type(exc).__name__,
            pause,
        )
        time.sleep(pause)
        return min(2 * pause, 2.0)

    def _write_one_by_one(self, batch: list[Waiting], exc: Exception) -> None:
        log.warning(
            "the outbox refused a batch of %d outcomes for its data (%s); writing them one by one",
            len(batch),
            type(exc).__name__,
        )
        for item in batch:
            self.written[item.claim.id] = self.one_by_one(item.claim, item.outcome)

    def _due(self, now: float, ahead: float) -> bool:
        if not self._waiting:
            return False
        if len(self._waiting) >= self.max_rows:
            return True
        wake = self._due_in(now)
        return wake is not None and wake <= ahead

    def _due_in(self, now: float) -> float | None:
        """Seconds until what is waiting must be written (None: nothing waits)."""
        if not self._waiting:
            return None
        held = self._waiting[0].since + self.max_hold
        lease = self._earliest_lease - self.lease_margin
        return max(0.0, min(held, lease) - now)
