"""When a round's gathered outcomes are written (relay.worker.group_commit), and how a round
sizes itself to the slots it can send in time (Dispatcher._sendable): no database here, the
outbox is a stand-in that records what it was asked to write."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import pytest
from sqlalchemy.exc import DataError, OperationalError

from relay.destinations.outcome import Outcome
from relay.limiter.base import Grant, Ticket
from relay.outbox.outcomes import Finish
from relay.outbox.store import Claim
from relay.worker.delivery import Dispatcher
from relay.worker.group_commit import GroupCommit

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def claim(n: int, lease_left: float = 60.0) -> Claim:
    return Claim(
        id=n,
        destination="servoki",
        event_id=f"e{n}",
        payload={},
        attempts=1,
        enqueued_at=NOW,
        lease_token="t",
        lease_deadline=time.monotonic() + lease_left,
    )


class Box:
    """The outbox's finish_many: answers from ``results`` (an exception is raised)."""

    def __init__(self, *results: Any) -> None:
        self.results = list(results)
        self.batches: list[list[int]] = []

    def finish_many(self, finishes: Sequence[Finish]) -> list[datetime | None]:
        self.batches.append([finish.row_id for finish in finishes])
        result = self.results.pop(0) if self.results else None
        if isinstance(result, Exception):
            raise result
        lost = result or set()
        return [None if finish.row_id in lost else NOW for finish in finishes]


def make(box: Box, **options: Any) -> tuple[GroupCommit, list[tuple[int, bool]], list[int]]:
    accounted: list[tuple[int, bool]] = []
    singles: list[int] = []

    def account(claim: Claim, outcome: Outcome, finish: Finish, at: datetime | None) -> None:
        accounted.append((claim.id, at is not None))

    def one_by_one(claim: Claim, outcome: Outcome) -> bool:
        singles.append(claim.id)
        return True

    options = {"lease_margin": 2.0, "patience": 5.0, **options}
    commit = GroupCommit(box, threading.Event(), account=account, one_by_one=one_by_one, **options)  # type: ignore[arg-type]
    return commit, accounted, singles


def add(commit: GroupCommit, c: Claim) -> None:
    commit.add(c, Outcome.delivered(202), Finish.delivered(c, 202))


def test_nothing_is_due_until_rows_time_or_a_lease_say_so() -> None:
    commit, _, _ = make(Box(), max_rows=3, max_hold=10.0)
    commit.write_if_due()
    add(commit, claim(1))
    add(commit, claim(2))
    commit.write_if_due()
    assert commit.written == {}  # two of three rows, held 0 s of 10, leases far away
    add(commit, claim(3))
    commit.write_if_due()
    assert commit.written == {1: True, 2: True, 3: True}


def test_the_oldest_outcome_waits_at_most_max_hold() -> None:
    commit, _, _ = make(Box(), max_hold=0.1)
    commit.started()  # a send is still under way: wait() returns only when a write is due
    add(commit, claim(1))
    started = time.monotonic()
    assert commit.wait() is True
    assert 0.05 <= time.monotonic() - started < 1.0
    commit.write_if_due()
    assert commit.written == {1: True}
    commit.finished()
    assert commit.wait() is False  # every send is over


def test_an_outcome_whose_lease_nears_its_end_is_written_at_once() -> None:
    commit, _, _ = make(Box(), max_hold=10.0, lease_margin=2.0)
    add(commit, claim(1, lease_left=1.5))  # inside the margin already
    commit.write_if_due()
    assert commit.written == {1: True}
    add(commit, claim(2, lease_left=8.0))
    commit.write_if_due()
    assert 2 not in commit.written
    commit.write_if_due(ahead=7.0)  # the next request may take 7 s: the lease would end
    assert commit.written[2] is True


def test_lost_leases_are_reported_and_accounted_as_not_written() -> None:
    box = Box({2})
    commit, accounted, _ = make(box)
    for n in (1, 2, 3):
        add(commit, claim(n))
    commit.write()
    assert box.batches == [[1, 2, 3]]  # one transaction
    assert commit.written == {1: True, 2: False, 3: True}
    assert accounted == [(1, True), (2, False), (3, True)]


def test_a_batch_refused_for_its_data_is_written_one_by_one() -> None:
    refused = DataError("UPDATE", {}, Exception("invalid byte sequence"))
    commit, accounted, singles = make(Box(refused))
    for n in (1, 2):
        add(commit, claim(n))
    commit.write()
    assert singles == [1, 2] and accounted == []  # the per-row path accounts for itself
    assert commit.written == {1: True, 2: True}


def test_a_failing_write_is_held_with_the_round_in_trouble_then_written() -> None:
    down = OperationalError("UPDATE", {}, Exception("the database restarts"))
    box = Box(down, down)
    commit, _, _ = make(box)
    add(commit, claim(1))
    commit.write()
    assert len(box.batches) == 3 and commit.written == {1: True}
    assert not commit.trouble.is_set()


def test_a_failing_write_gives_up_at_the_patience() -> None:
    down = OperationalError("UPDATE", {}, Exception("the database is down"))
    commit, _, _ = make(Box(*[down] * 20), patience=0.5)
    add(commit, claim(1))
    started = time.monotonic()
    with pytest.raises(OperationalError):
        commit.write()
    assert time.monotonic() - started < 1.5
    assert commit.trouble.is_set() and commit.written == {}


# -- how many slots a round keeps --------------------------------------------------------------


def dispatcher(send_time: float | None, concurrency: int = 4) -> Dispatcher:
    limiter = SimpleNamespace(late_margin=0.05)
    made = Dispatcher(None, {}, None, None, limiter, {}, concurrency=1)  # type: ignore[arg-type]
    made.concurrency = concurrency
    made._send_time = send_time
    return made


def grant(at: Sequence[float]) -> Grant:
    return Grant(tuple(Ticket(("s",), t) for t in at))


def test_a_round_keeps_every_slot_until_a_send_was_measured() -> None:
    now = time.monotonic()
    assert dispatcher(None)._sendable({"a": grant([now] * 50)}) == {"a": 50}


def test_slots_all_due_at_once_are_kept_only_as_many_as_can_go_out_in_time() -> None:
    now = time.monotonic()
    kept = dispatcher(0.002)._sendable({"a": grant([now] * 50), "b": grant([now] * 50)})
    # 4 at a time, 2 ms each, within half the 50 ms margin: about 48 of the 100, shared.
    assert 40 <= kept["a"] + kept["b"] <= 56 and abs(kept["a"] - kept["b"]) <= 4


def test_every_destination_keeps_one_slot_however_crowded_the_round() -> None:
    now = time.monotonic()
    grants = {f"key{i}": grant([now - 1.0] * 5) for i in range(20)}  # all a second late
    assert dispatcher(0.002)._sendable(grants) == dict.fromkeys(grants, 1)


def test_slots_spread_by_a_rate_limit_are_all_kept() -> None:
    now = time.monotonic()
    spread = [now + i / 60 for i in range(60)]  # 60/s over the next second
    assert dispatcher(0.002)._sendable({"a": grant(spread)}) == {"a": 60}


# -- how many rows the next round claims -------------------------------------------------------


def test_the_next_round_claims_what_this_one_could_send_and_probes_for_more_gently() -> None:
    made = dispatcher(0.002)
    want = lambda: made._want["a"]  # noqa: E731
    made._next_want("a", claimed=50, kept=40, limit=50)  # 40 could go out in time
    assert want() == 40
    made._next_want("a", claimed=40, kept=40, limit=50)  # all sent: one more, not 25% more
    assert want() == 41
    made._next_want("a", claimed=41, kept=40, limit=50)  # one row too many: given back
    assert want() == 40
    made._next_want("a", claimed=3, kept=3, limit=50)  # the backlog ran dry
    assert want() == 6
    for expected in (12, 24, 40, 41):  # doubling back up to the last limit, then one by one
        made._next_want("a", claimed=want(), kept=want(), limit=50)
        assert want() == expected
    made._next_want("a", claimed=41, kept=41, limit=41)
    assert want() == 41  # never above the dispatch batch
