"""The delivery engine: claim due outbox rows, POST each, record what the response meant.

No database transaction is open while a request is in flight: claiming commits a lease, the
POST happens, and the outcome is written with an update guarded by the lease token.

Each round claims due rows of every destination (as many as the last round's slots allowed),
then reserves a send slot for each (at most ``reserve_ahead`` seconds ahead) and gives back the
rows no slot came for, so a row is never held much longer than its slot is away, and a
destination with a large backlog cannot hold up another one: each has its own bucket and its
own claims, in a rotating order.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

import redis
from sqlalchemy.exc import SQLAlchemyError

from relay.destinations import Destination
from relay.destinations.outcome import Outcome, Verdict, truncate
from relay.errors import LimiterUnavailable
from relay.limiter.base import Grant, Limiter, SlotMissed, Ticket
from relay.limiter.pauses import Pauses
from relay.outbox.outcomes import Finish
from relay.outbox.store import Claim, Outbox, refused_for_data, utcnow
from relay.worker import failpoints, metrics
from relay.worker.group_commit import GroupCommit
from relay.worker.retry import RetryPolicy
from relay.worker.transport import TIMEOUTS, TRANSPORT_ERRORS, HttpClient

log = logging.getLogger("relay.delivery")


@dataclass
class DispatchReport:
    """What one dispatch round did."""

    claimed: int = 0
    delivered: int = 0
    retried: int = 0
    dead: int = 0
    paused: set[str] = field(default_factory=set)
    lost_leases: int = 0
    held: int = 0
    """Claimed rows given back unsent: a 429 paused their scope, or the limiter was down."""
    limited: dict[str, float] = field(default_factory=dict)
    """Destinations that got no send slot → seconds until a reservation could get one."""

    def add(self, other: DispatchReport) -> None:
        self.claimed += other.claimed
        self.delivered += other.delivered
        self.retried += other.retried
        self.dead += other.dead
        self.paused |= other.paused
        self.lost_leases += other.lost_leases
        self.held += other.held
        self.limited = dict(other.limited)


def encode_body(payload: Mapping[str, Any]) -> bytes:
    """The request body: the same bytes on every attempt of an event."""
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()


MAX_SLOT_TRIES = 5
"""Fresh slots a request may take when it could not be written in time for the last one."""

UNSTORABLE = "the API's answer could not be stored (see the worker's log)"
"""An outcome's detail when the database refused the answer itself."""


class Dispatcher:
    """Delivers due outbox rows to their destinations."""

    def __init__(
        self,
        outbox: Outbox,
        destinations: Mapping[str, Destination],
        http: HttpClient,
        pauses: Pauses,
        limiter: Limiter,
        policies: Mapping[str, RetryPolicy],
        *,
        lease_seconds: float = 60.0,
        concurrency: int = 4,
        reserve_ahead: float = 0.15,
        send_seconds: float = 13.0,
        record_patience: float = 30.0,
    ) -> None:
        self.outbox = outbox
        self.destinations = destinations
        self.http = http
        self.pauses = pauses
        self.limiter = limiter
        self.policies = policies
        """Each destination's retry policy."""
        self.lease_seconds = lease_seconds
        self.concurrency = concurrency
        # Far below the lease: a claimed row goes out long before its lease could end. Short
        # rounds: workers take turns at each bucket instead of one worker taking a whole
        # second of every key's slots while the others wait, and a slot missed on a busy
        # host is reserved again at most this far off, not a second later (bench/keys.py:
        # 20 keys, 2 workers: 1.0 s sustained ~55% of the limit, 0.15 s ~80-90%).
        self.reserve_ahead = min(reserve_ahead, lease_seconds / 4)
        # The longest one request can take (connect + read timeouts): a row is sent only while
        # at least this much of its lease is left, so its lease cannot end mid-request.
        self.send_seconds = send_seconds
        # How long an outcome whose write failed (the database restarting) is held and
        # retried; meanwhile the round sends nothing more.
        self.record_patience = record_patience
        # A request's total deadline ends this long before its lease does: time to write the
        # outcome while no other worker can claim the row.
        self.lease_margin = min(2.0, lease_seconds / 10)
        self._pool = ThreadPoolExecutor(concurrency) if concurrency > 1 else None
        self._want: dict[str, int] = {}
        """Rows to claim per destination next round (see ``_next_want``)."""
        self._room: dict[str, int] = {}
        """Rows of each destination the last round limited by slots or time could send."""
        self._send_time: float | None = None
        """Seconds one request takes, a moving average (see ``_sendable``)."""
        self._turn = 0
        self.slots_fell_behind = 0
        """Rows handed back because the round reached them after their slot had passed."""

    def active_destinations(self) -> tuple[list[str], list[str]]:
        """(destinations to send to normally, paused ones that may get one probe now)."""
        paused = self.pauses.all()
        active = [name for name in self.destinations if name not in paused]
        probes = [
            name
            for name, record in paused.items()
            if name in self.destinations and self.pauses.take_probe(name, record)
        ]
        return active, probes

    def dispatch_due(self, limit: int) -> DispatchReport:
        """Claim and deliver up to ``limit`` due rows per destination; return what happened."""
        report = DispatchReport()
        plan = self._claim_round(limit, report)
        work = plan.work
        report.claimed = len(work)
        round_ = Round()
        commit = round_.commit = self._group_commit(round_)
        try:
            results = self._send_round(
                work, round_, commit, lambda: self._settle_plan(plan, round_)
            )
        finally:
            try:
                commit.write()  # what is left when the round is over
                # Rows whose slot passed before their turn: the next round's.
                self.outbox.release_many([(claim, 0.0) for claim in round_.behind])
            except SQLAlchemyError as exc:
                round_.fail(exc)
        if round_.failure is not None:
            # The outbox (or Redis) failed for good: the worker backs off; unsent rows wait
            # out their leases, outcomes not written are resent then.
            raise round_.failure
        for (claim, _, _), (outcome, recorded) in zip(work, results, strict=True):
            if recorded is None:  # handed to the group commit
                recorded = commit.written.get(claim.id, False)
            _tally(report, claim, outcome, recorded)
        return report

    def _group_commit(self, round_: Round) -> GroupCommit:
        return GroupCommit(
            self.outbox,
            round_.trouble,
            account=self.account,
            one_by_one=lambda claim, outcome: self._persist(claim, outcome, False, round_),
            lease_margin=self.lease_margin,
            patience=self.record_patience,
        )

    def _settle_plan(self, plan: Plan, round_: Round) -> None:
        """Once the round's sends are under way: refund the slots no row used, give back the
        rows no slot came for (one statement). A failure fails the round (the worker backs
        off); rows not given back wait out their leases."""
        try:
            for grant, unused in plan.refunds:
                self.limiter.refund(grant, unused)
            self.outbox.release_many(plan.give_back)
        except (SQLAlchemyError, LimiterUnavailable) as exc:
            round_.fail(exc)

    def _send_round(
        self,
        work: list[tuple[Claim, bool, Ticket]],
        round_: Round,
        commit: GroupCommit,
        started: Callable[[], None],
    ) -> list[tuple[Outcome | None, bool | None]]:
        """Send the round's rows (``concurrency`` at a time) while this thread writes their
        outcomes as they gather (see :mod:`relay.worker.group_commit`); ``started`` runs on
        this thread once the sends are under way."""
        if self._pool is None or len(work) <= 1:
            started()
            results = []
            for item in work:
                # Before a request that may take up to send_seconds: write what could not
                # wait that long (a lease ending).
                self._write_or_fail(commit, round_, ahead=self.send_seconds)
                results.append(round_.run(self.deliver, *item))
            return results
        futures = []
        for item in work:
            commit.started()
            futures.append(self._pool.submit(round_.run, self.deliver, *item))
            futures[-1].add_done_callback(commit.finished)
        started()
        while commit.wait(writes=round_.failure is None):
            self._write_or_fail(commit, round_)
        return [future.result() for future in futures]

    @staticmethod
    def _write_or_fail(commit: GroupCommit, round_: Round, ahead: float = 0.0) -> None:
        """Write the outcomes that are due; a write that failed for good fails the round (its
        sends still finish: their outcomes are tried again at the round's end)."""
        if round_.failure is not None:
            return
        try:
            commit.write_if_due(ahead)
        except SQLAlchemyError as exc:
            round_.fail(exc)

    def _claim_round(self, limit: int, report: DispatchReport) -> Plan:
        """This round's work: probes first, then every active destination in turn, each row
        with its reserved send slot, in slot order.

        The turn rotates each round: destinations that share a scope take what is left of it
        in a different order every round, so none gets less than its share for long.
        """
        active, probes = self.active_destinations()
        self._turn += 1
        if active:
            turn = self._turn % len(active)
            active = active[turn:] + active[:turn]
        wants = [(name, 1, True) for name in probes]
        wants += [(name, self._want.get(name, limit), False) for name in active]
        plan = self._plan(wants, limit, report)
        plan.work.sort(key=lambda item: item[2].at)
        return plan

    def _plan(self, wants: list[tuple[str, int, bool]], limit: int, report: DispatchReport) -> Plan:
        """Claim due rows of every ``(destination, rows wanted, probe)`` in one statement,
        then reserve a send slot for each in one limiter call; rows that got no slot go back
        (after the sends have started), slots no row can use in time are refunded.

        Rows first, slots second: the slots' clock starts once the rows are in hand, so a slow
        claim (a database hiccup of 60 ms) cannot make a whole round's slots late (each one
        then lost to the bucket and reserved again). Two round trips a round however many
        destinations there are.
        """
        probing = {name for name, _, probe in wants if probe}
        claimed = self.outbox.claim_due_each(
            {name: want for name, want, _ in wants}, self.lease_seconds
        )
        rows: dict[str, list[Claim]] = {}
        for claim in claimed:
            if not self._gave_up(claim, report):
                rows.setdefault(claim.destination, []).append(claim)
        for name, _, probe in wants:
            if not probe and name not in rows:
                self._want[name] = 1  # nothing due: ask for one row a round until there is
        if not rows:
            return Plan()
        names = [name for name, _, _ in wants if name in rows]  # the round's rotating order
        requests = [(self.destinations[name].limit_scopes(), len(rows[name])) for name in names]
        try:
            grants = dict(
                zip(names, self.limiter.reserve_many(requests, self.reserve_ahead), strict=True)
            )
        except LimiterUnavailable:
            # Fail closed: the claimed rows go back unsent, their attempt refunded.
            self.outbox.release_many([(claim, 1.0) for claim in claimed])
            raise
        keep = self._sendable({name: grant for name, grant in grants.items() if grant.tickets})
        plan = Plan()
        for name in names:
            grant, claims = grants[name], rows[name]
            kept = min(len(claims), keep.get(name, 0))
            wait = 0.0
            if not grant.tickets:  # no slot at all: its rows are due when the bucket has one
                wait = report.limited[name] = max(0.0, grant.retry_in - self.reserve_ahead)
            plan.give_back += [(claim, wait) for claim in claims[kept:]]
            plan.work += [
                (claim, name in probing, ticket)
                for claim, ticket in zip(claims[:kept], grant.tickets[:kept], strict=True)
            ]
            if len(grant.tickets) > kept:
                plan.refunds.append((grant, len(grant.tickets) - kept))
            if name not in probing:
                self._next_want(name, len(claims), kept, limit)
        return plan

    def _next_want(self, name: str, claimed: int, kept: int, limit: int) -> None:
        """Rows of ``name`` to claim next round: as many as this round could send (its slots
        and the time to send them were the limit), fewer once the backlog runs dry, and more
        while every row was sent: doubling up to the last limit seen, then one at a time
        (each row over the limit is claimed and given back)."""
        want = self._want.get(name, limit)
        if kept < claimed:
            self._room[name] = kept
            self._want[name] = max(1, kept)
        elif claimed < want:
            self._want[name] = max(1, min(limit, 2 * claimed))  # the backlog ran dry
        else:
            room = self._room.get(name, limit)
            self._want[name] = min(limit, min(room, 2 * want) if want < room else want + 1)

    def _sendable(self, grants: Mapping[str, Grant]) -> dict[str, int]:
        """How many of each grant's slots this round can keep: its requests go out
        ``concurrency`` at a time, each taking about ``send_time``; a slot whose request
        would start more than half the limiter's late margin after it is given back now.

        Slots of a limit far above what one worker sends all fall at once: the last of a
        big round would be missed, each costing a fresh reservation and a check (two Redis
        round trips) instead of one claim in the next round.
        """
        counts = {name: len(grant.tickets) for name, grant in grants.items()}
        if self._send_time is None:
            return counts  # nothing measured yet
        # In slot order; slots due at the same moment alternate between destinations, in the
        # order ``grants`` lists them (the round's rotating turn: a fixed order, by name say,
        # would cut the same destinations' slots every crowded round).
        slots = sorted(
            (ticket.at, i, turn, name)
            for turn, (name, grant) in enumerate(grants.items())
            for i, ticket in enumerate(grant.tickets)
        )
        start = time.monotonic()
        budget = self.limiter.late_margin / 2
        # At least one each: a probe, or a destination late in a crowded round, goes out.
        counts = dict.fromkeys(grants, 1)
        for k, (at, i, _, name) in enumerate(slots):
            if i > 0 and start + (k // self.concurrency) * self._send_time - at <= budget:
                counts[name] += 1
        return counts

    def _gave_up(self, claim: Claim, report: DispatchReport) -> bool:
        """Mark a claim dead, unsent, if its earlier attempts used up every one allowed.

        Attempts are counted when a row is claimed, so a row whose every delivery stopped the
        worker mid-request (killed, out of memory) still runs out instead of looping forever.
        """
        policy = self.policies[claim.destination]
        if claim.attempts <= policy.max_attempts:
            return False
        reason = (
            f"gave up after {claim.attempts - 1} attempts "
            f"({policy.attempts_setting}={policy.max_attempts}); the last ones never finished: "
            "the worker stopped while sending (see its logs)"
        )
        if self.outbox.mark_dead(claim, None, reason):
            metrics.outcome(Verdict.DEAD, claim.destination, None, None)
            report.dead += 1
            log.error(
                "dead event_id=%s destination=%s: %s", claim.event_id, claim.destination, reason
            )
        return True

    def deliver(
        self,
        claim: Claim,
        probe: bool = False,
        ticket: Ticket | None = None,
        *,
        round_: Round | None = None,
    ) -> tuple[Outcome | None, bool | None]:
        """Send one claimed event and record the outcome; (outcome, whether it was recorded).

        Recorded is None when the outcome went to the round's group commit, which says later.

        ``probe`` marks the single event sent to a paused destination to test its key.
        ``ticket`` is its reserved send slot (None: wait for one here). The outcome is None when
        the row went back unsent: a 429 paused its scope, or the limiter's Redis is down.
        """
        destination = self.destinations[claim.destination]
        round_ = round_ or Round()
        for tries in range(MAX_SLOT_TRIES):
            gate: Callable[[], None] | None = None
            try:
                if ticket is None:
                    self.limiter.acquire(destination.limit_scopes())
                else:
                    waited = time.monotonic()
                    # The round reached this row after its planned slot (a first try; after
                    # a SlotMissed the wait below reserves a fresh slot for it).
                    late = waited - ticket.at > self.limiter.late_margin
                    if late and not tries and not probe and round_.commit is not None:
                        return self._fell_behind(claim, round_)
                    clearance = self.limiter.wait(ticket)
                    if not clearance.go:
                        return None, self.outbox.release(claim, clearance.paused_for)
                    metrics.limiter_waited(claim.destination, time.monotonic() - waited)
                    gate = self._slot_gate(claim, clearance.slot)
            except LimiterUnavailable:
                return None, self.outbox.release(claim, 1.0)
            if claim.destination in round_.stopped:
                # The API refused this round's key (or the URL is wrong): nothing more goes
                # out with it; the row goes back unsent, its attempt refunded.
                return None, self.outbox.release(claim, self.pauses.probe_seconds)
            if claim.lease_left() < self.send_seconds:
                # A slow round: this row's lease could end mid-request and let another worker
                # send it too. It goes back unsent, due at once, its attempt refunded.
                log.debug("lease of event_id=%s too short to send; released", claim.event_id)
                return None, self.outbox.release(claim, 0.0)
            try:
                sending = time.monotonic()
                outcome = self.send(destination, claim, before_write=gate)
                self._sent(time.monotonic() - sending)
            except SlotMissed:
                continue  # nothing was written: wait for a fresh slot (the old one is stale)
            break
        else:
            # This process cannot keep its slots (starved of CPU?): the row goes back.
            return None, self.outbox.release(claim, 1.0)
        if outcome.verdict is Verdict.PAUSE:
            round_.stopped.add(claim.destination)
        if outcome.throttled:
            outcome = self._throttled(destination, outcome)
        outcome = self.settle(claim, outcome)
        failpoints.hit("dispatch.after_send")
        if round_.commit is not None and not probe and outcome.verdict is not Verdict.PAUSE:
            # Written with the round's other outcomes; a probe's and a pause's at once.
            round_.commit.add(claim, outcome, self._finish_for(claim, outcome))
            return outcome, None
        return outcome, self._persist(claim, outcome, probe, round_)

    def _fell_behind(self, claim: Claim, round_: Round) -> tuple[Outcome | None, bool | None]:
        """The round reached this row after its slot had passed (a stalled process, a slow
        request ahead of it): the slot is lost, and the row goes to the next round, which
        reserves fresh slots for all its rows at once. Waiting here for a fresh slot would
        hold this thread, and make the rows queued behind it late too, one after another."""
        with round_.lock:
            round_.behind.append(claim)
            self.slots_fell_behind += 1
        return None, True

    def _persist(self, claim: Claim, outcome: Outcome, probe: bool, round_: Round) -> bool:
        """``record`` the outcome; while the outbox fails, hold it and try again.

        The request has been answered: losing its outcome means sending the event again
        later (a double count at DataLook), so the write is worth waiting for.
        """
        # Holding ends before the lease does: once it ends, another worker may claim the row
        # and send the event again while this outcome still waits to be written.
        give_up = min(
            time.monotonic() + self.record_patience, claim.lease_deadline - self.lease_margin / 2
        )
        pause = 0.2
        while True:
            try:
                recorded = self.record(claim, outcome, probe=probe)
            except Exception as exc:
                refusal = refused_for_data(exc)
                if refusal is not None and outcome.detail != UNSTORABLE:
                    # The database is up: it refused what the answer holds. Waiting cannot
                    # help; record the outcome without the answer, at once.
                    log.error(
                        "the outcome of event_id=%s could not be stored as it is (%s); "
                        "recording it without the API's answer",
                        claim.event_id,
                        refusal,
                    )
                    outcome = replace(outcome, detail=UNSTORABLE)
                    continue
                if not isinstance(exc, SQLAlchemyError):
                    raise  # a bug, not the database: the round logs it with its traceback
                round_.trouble.set()
                if time.monotonic() + pause > give_up:
                    log.error(
                        "could not record the outcome of event_id=%s for %.0fs (%s): it will be "
                        "sent again when its lease ends",
                        claim.event_id,
                        self.record_patience,
                        type(exc).__name__,
                    )
                    raise
                log.warning(
                    "recording the outcome of event_id=%s failed (%s); trying again in %.1fs",
                    claim.event_id,
                    type(exc).__name__,
                    pause,
                )
                time.sleep(pause)
                pause = min(2 * pause, 2.0)
                continue
            round_.trouble.clear()
            return recorded

    def _sent(self, seconds: float) -> None:
        """One request took ``seconds`` (this thread's share of the process included)."""
        last = self._send_time
        self._send_time = seconds if last is None else last + 0.1 * (seconds - last)

    def _throttled(self, destination: Destination, outcome: Outcome) -> Outcome:
        """A 429 means the budget was wrong: pause the scope for every worker, slow it down."""
        try:
            pause = self.limiter.throttle(destination.limit_scopes(), outcome.retry_after)
        except LimiterUnavailable:
            return outcome
        # The event waits as long as its scope does: the pause is Retry-After, capped.
        return replace(outcome, retry_after=pause) if pause > 0 else outcome

    def _slot_gate(self, claim: Claim, slot: float) -> Callable[[], None]:
        """What runs right before the request's first byte: a request later than its slot
        allows (a slow Redis check, a busy pool, a new connection) is called off unsent."""

        def gate() -> None:
            now = time.monotonic()
            late = now - slot
            if late > self.limiter.late_margin:
                raise SlotMissed(f"{late:.3f}s after its slot")
            self.limiter.written(late)
            log.debug("send event_id=%s slot=%.6f at=%.6f", claim.event_id, slot, now)

        return gate

    def send(
        self,
        destination: Destination,
        claim: Claim,
        *,
        before_write: Callable[[], None] | None = None,
    ) -> Outcome:
        """POST the event within one total deadline; translate transport errors into retry
        outcomes.

        The deadline is the longest a request may take (connect + read timeout), and never
        later than the claim's lease minus a margin: by then the request is over, answered or
        its connection dropped, so no other worker can send the event while it is in flight.
        """
        budget = min(self.send_seconds, claim.lease_left() - self.lease_margin)
        try:
            request = destination.build_request(encode_body(claim.payload))
            answer = self.http.send(request, budget, before_write=before_write)
            return destination.classify(answer.status, answer.headers, answer.body)
        except SlotMissed:
            raise
        except TIMEOUTS as exc:
            return Outcome.retry(None, f"timeout: {type(exc).__name__} ({budget:.1f}s deadline)")
        except TRANSPORT_ERRORS as exc:
            detail = f"connection error: {type(exc).__name__}: {exc}"
        except Exception as exc:  # anything else must not lose the round
            # An undecodable body, a bug: logged in full, retried, and dead with this detail
            # once the attempts run out.
            log.exception("sending event_id=%s failed unexpectedly", claim.event_id)
            detail = f"unexpected error: {type(exc).__name__}: {exc}"
        return Outcome.retry(None, destination.redact(detail))

    def record(self, claim: Claim, outcome: Outcome, *, probe: bool = False) -> bool:
        """Write ``outcome`` for ``claim`` if its lease still holds; log one line; count it in
        the metrics if it was written (an outcome that lost its lease is not counted)."""
        if outcome.verdict is Verdict.PAUSE:
            return self._record_pause(claim, outcome, probe)
        finish = self._finish_for(claim, outcome)
        written_at = self.outbox.finish_many([finish])[0]
        self.account(claim, outcome, finish, written_at, probe=probe)
        return written_at is not None

    def _finish_for(self, claim: Claim, outcome: Outcome) -> Finish:
        """What the row becomes for ``outcome`` (not a pause: that is written at once)."""
        status = outcome.status
        if outcome.verdict is Verdict.DELIVERED:
            assert status is not None
            return Finish.delivered(claim, status)
        if outcome.verdict is Verdict.DEAD:
            return Finish.dead(claim, status, outcome.detail)
        policy = self.policies[claim.destination]
        delay = policy.delay(self._attempts_used(claim, outcome), outcome.retry_after)
        return Finish.retry(claim, status, outcome.detail, delay, outcome.throttled)

    def account(
        self,
        claim: Claim,
        outcome: Outcome,
        finish: Finish,
        written_at: datetime | None,
        *,
        probe: bool = False,
    ) -> None:
        """Log one written (or dropped) outcome and count it in the metrics if it was written.

        ``written_at`` is the database's time of the write, None when the lease was lost.
        """
        where = f"event_id={claim.event_id} destination={claim.destination}"
        status = outcome.status
        if outcome.verdict is Verdict.DELIVERED:
            if written_at is not None:
                # Counted at once: the probe's resume below may fail, the row is delivered.
                latency = (written_at - claim.enqueued_at).total_seconds()
                metrics.outcome(outcome.verdict, claim.destination, status, latency)
            if probe:
                # Only the relay's own pause: one an operator set meanwhile stays.
                self.pauses.resume(claim.destination, only_by="relay")
            log.info("delivered %s status=%s attempt=%d", where, status, claim.attempts)
        elif outcome.verdict is Verdict.DEAD:
            log.error("dead %s status=%s: %s", where, status, truncate(outcome.detail, 200))
        else:
            log.warning(
                "retry %s status=%s in %.1fs: %s",
                where,
                status,
                finish.delay or 0.0,
                truncate(outcome.detail, 200),
            )
        if written_at is None:
            log.warning("lease lost for %s: a newer claim owns the row; result dropped", where)
        elif outcome.verdict is not Verdict.DELIVERED:
            metrics.outcome(outcome.verdict, claim.destination, status, None)

    def _record_pause(self, claim: Claim, outcome: Outcome, probe: bool) -> bool:
        where = f"event_id={claim.event_id} destination={claim.destination}"
        status = outcome.status
        reason = outcome.reason or f"HTTP {status}: the API refused the key"
        self.pauses.pause(claim.destination, reason, status, probe=probe)
        recorded = self.outbox.release(
            claim, self.pauses.probe_seconds, refused=(status, outcome.detail)
        )
        log.error("paused %s status=%s: %s; fix it, then resume", where, status, reason)
        if not recorded:
            log.warning("lease lost for %s: a newer claim owns the row; result dropped", where)
        else:
            metrics.outcome(outcome.verdict, claim.destination, status, None)
        return recorded

    def settle(self, claim: Claim, outcome: Outcome) -> Outcome:
        """A retry the policy no longer allows becomes dead, with the reason and last error."""
        if outcome.verdict is not Verdict.RETRY:
            return outcome
        reason = self.policies[claim.destination].exhausted(
            # The database's time of the claim: this worker's clock may be off.
            self._attempts_used(claim, outcome),
            claim.age_from,
            claim.claimed_at or utcnow(),
        )
        if reason is None:
            return outcome
        return Outcome.dead(outcome.status, f"{reason}; last: {outcome.detail}")

    @staticmethod
    def _attempts_used(claim: Claim, outcome: Outcome) -> int:
        # A 429 means the budget was wrong, not the event: it does not use up an attempt.
        return claim.attempts - 1 if outcome.throttled else claim.attempts

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)


@dataclass
class Plan:
    """One round's claims: the rows to send, each with its slot, and what is left over."""

    work: list[tuple[Claim, bool, Ticket]] = field(default_factory=list)
    """(row, probe, slot) to send."""
    give_back: list[tuple[Claim, float]] = field(default_factory=list)
    """Rows no slot came for, and when they are due again (s)."""
    refunds: list[tuple[Grant, int]] = field(default_factory=list)
    """Slots no row can use in time: (grant, how many of its last slots)."""


class Round:
    """What the sends of one dispatch round share.

    When writing an outcome fails (the database restarting), the outcome is held and written
    again with backoff for up to ``record_patience`` seconds; meanwhile no other row of the
    round is sent, so an outage loses at most the outcomes of the requests already in flight.
    """

    def __init__(self) -> None:
        self.trouble = threading.Event()
        self.stopped: set[str] = set()
        """Destinations whose key (or URL) an answer in this round refused: no more sends."""
        self.failure: BaseException | None = None
        self.commit: GroupCommit | None = None
        """Where the round's outcomes gather to be written together (None: one by one)."""
        self.behind: list[Claim] = []
        """Rows the round reached after their slot had passed: given back when it ends."""
        self.lock = threading.Lock()

    def fail(self, exc: BaseException) -> None:
        """The outbox (or Redis) failed for good: send nothing more, fail the round."""
        self.trouble.set()
        with self.lock:
            self.failure = self.failure or exc

    def run(
        self,
        deliver: Callable[..., tuple[Outcome | None, bool | None]],
        claim: Claim,
        probe: bool,
        ticket: Ticket,
    ) -> tuple[Outcome | None, bool | None]:
        """``deliver`` one claim unless the round is in trouble; never raises."""
        if self.trouble.is_set():
            return None, False  # held: its lease runs out, then it is claimed again
        try:
            return deliver(claim, probe, ticket, round_=self)
        except (SQLAlchemyError, redis.RedisError, LimiterUnavailable) as exc:
            self.fail(exc)
        except Exception:
            # A bug with this one row: the others go on. The row is held until its lease ends;
            # every claim counts an attempt, so it ends dead instead of looping.
            log.exception("delivering event_id=%s failed unexpectedly", claim.event_id)
        return None, False


def _tally(report: DispatchReport, claim: Claim, outcome: Outcome | None, recorded: bool) -> None:
    """Count one row's result in the round's report."""
    if outcome is None:
        report.held += 1
    elif not recorded:
        report.lost_leases += 1
    elif outcome.verdict is Verdict.DELIVERED:
        report.delivered += 1
    elif outcome.verdict is Verdict.DEAD:
        report.dead += 1
    elif outcome.verdict is Verdict.PAUSE:
        report.paused.add(claim.destination)
    else:
        report.retried += 1
