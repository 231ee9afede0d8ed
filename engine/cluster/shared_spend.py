"""The job's spending cap shared by every worker of a cluster, in Redis.

`SpendBudget` holds the cap in one process; N workers each holding it
would spend N times the cap.  Here the tally (spent, reserved) lives in
one Redis hash under the job's prefix, and reserving, settling, lowering
and renewing are each one call of one Lua script (`spend_script.lua`), so
two workers can never both take the last room.  The tally outlives runs:
what earlier runs spent counts, as the store's runs do for one process.

A reservation is held until its worker settles it, and a worker renews its
holds while it lives (`run_writer`, every quarter of `hold_s`).  One that
is not renewed in time — its worker died or lost Redis — is counted as
spent at its worst case, so the cap holds whatever that request cost; a
settle that comes after all corrects the tally to what it was billed.

A worker waits for room on the script's notices (Redis pub/sub, one
message per settle anywhere in the cluster) rather than asking again and
again; it stops when nothing is in flight in the whole cluster and even
the least it needs does not fit.  Settles are written in the order they
happened by `run_writer`, beside the job; the worker's own view (spent,
reserved, for its snapshot) follows at once and is corrected by every
answer of the script.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources

from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from engine.cluster.redis_connection import DeadlineRetry
from engine.cluster.shared_budget import RETRY_FOR_S, SharedBudgetUnavailable
from engine.limits.spend_budget import BudgetReservation, Costs, SpendBudget

_EPSILON_USD = 1e-12


@dataclass(frozen=True, slots=True)
class TallyAnswer:
    """What the script said: whether it took the reservation, how much, and the tally after."""

    ok: bool
    taken_usd: float
    spent_usd: float
    reserved_usd: float
    soonest_s: float | None  # until the first hold in the cluster runs out (None: no holds)

    @classmethod
    def parse(cls, raw: Sequence[object]) -> TallyAnswer:
        ok, taken, spent, reserved, soonest = (
            x.decode() if isinstance(x, bytes) else str(x) for x in raw
        )
        wait = float(soonest)
        until = None if wait < 0 else wait
        return cls(ok == "1", float(taken), float(spent), float(reserved), until)


class SharedSpendBudget(SpendBudget):
    """`cap_usd` held for every worker of the job under `prefix`, this one `worker_id`.

    `open()` before the job, `run_writer()` beside it (a task of its
    `TaskGroup`) until `close_writer()`, `aclose()` at the end.
    """

    EARLIER = "before this worker joined"

    def __init__(
        self,
        cap_usd: float,
        redis: Redis,
        prefix: str,
        worker_id: str,
        *,
        hold_s: float,
        retry_for_s: float = RETRY_FOR_S,
    ) -> None:
        super().__init__(cap_usd)
        self._redis = redis
        self._keys = [
            f"{prefix}:spend",
            f"{prefix}:spend:held",
            f"{prefix}:spend:amounts",
            f"{prefix}:spend:expired",
        ]
        self._channel = f"{prefix}:spend:notices"
        self._worker_id = worker_id
        self._hold_s = hold_s
        self._retry_for_s = retry_for_s
        self._script = redis.register_script(
            resources.files("engine.cluster").joinpath("spend_script.lua").read_text("utf-8")
        )
        self._numbers = itertools.count(1)
        self._open: dict[str, float] = {}  # this worker's reservations not yet settled
        self._pending: deque[list[str]] = deque()  # script calls to write, in order
        self._pending_changed = asyncio.Event()
        self._closing = False
        self._notices: PubSub | None = None
        self._cluster_spent = 0.0

    @property
    def spent_total_usd(self) -> float:
        """Every worker's, every run's: the tally as last heard, and this worker's since."""
        return self._cluster_spent

    async def open(self) -> None:
        """Listen for the cluster's settles, and read what earlier runs spent."""
        self._notices = self._redis.pubsub(ignore_subscribe_messages=True)
        await self._notices.subscribe(self._channel)
        answer = await self._call(["read"])
        self._mirror(answer)
        self.spent_earlier_usd = answer.spent_usd

    async def aclose(self) -> None:
        """Stop listening."""
        if self._notices is not None:
            await self._notices.aclose()
            self._notices = None

    # ------------------------------------------------------------- reserving
    def try_reserve(self, worst_usd: float) -> BudgetReservation | None:
        """Never without asking Redis: use `reserve`."""
        raise NotImplementedError("a shared budget reserves through Redis: await reserve()")

    async def reserve(self, costs: Costs) -> BudgetReservation | None:
        """`SpendBudget.reserve`, cluster-wide: waits while requests in flight anywhere may
        free room; with none in flight, the last room if it pays for the least."""
        while not self.reached:
            if self.probing:  # this worker's first request teaches what answers cost
                self._room.clear()
                await self._room.wait()
                continue
            self._forget_notices()  # a settle after this wakes the wait below
            worst_usd, least_usd = costs()
            least = min(least_usd, worst_usd)
            name = f"{self._worker_id}:{next(self._numbers)}"
            answer = await self._call(
                [
                    "reserve",
                    name,
                    repr(worst_usd),
                    repr(least),
                    repr(self.cap_usd),
                    repr(self._hold_s),
                ]
            )
            self._mirror(answer)
            if answer.ok:
                self._open[name] = answer.taken_usd
                return BudgetReservation(self, answer.taken_usd, name)
            if answer.reserved_usd <= _EPSILON_USD:
                return None  # nothing in flight anywhere, and not even the least fits
            # A hold that runs out frees room too, without a notice.
            await self._notice(min(self._hold_s, answer.soonest_s or self._hold_s))
        return None

    def _forget_notices(self) -> None:
        self._room.clear()

    async def _notice(self, timeout_s: float) -> None:
        """Until a settle anywhere (or this worker's own, not yet written), or `timeout_s`."""
        assert self._notices is not None, "open() first"
        notices = self._notices

        async def from_redis() -> None:
            await notices.get_message(timeout=timeout_s)

        listening = asyncio.ensure_future(from_redis())
        own = asyncio.ensure_future(self._room.wait())
        try:
            await asyncio.wait(
                (listening, own), timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            for waiter in (listening, own):
                waiter.cancel()
            await asyncio.gather(listening, own, return_exceptions=True)

    # ------------------------------------------------------------- settling
    def _lowered(self, reservation: BudgetReservation, old_usd: float) -> None:
        self.reserved_usd = max(0.0, self.reserved_usd - (old_usd - reservation.worst_usd))
        self._open[reservation.name] = reservation.worst_usd
        self._queue(["lower", reservation.name, repr(reservation.worst_usd), self._channel])

    @property
    def probing(self) -> bool:
        """This worker's first request is out and has not ended (see `SpendBudget`)."""
        return self.settles == 0 and bool(self._open)

    def _settled(self, reservation: BudgetReservation, billed_usd: float) -> None:
        self.settles += 1
        self.spent_usd += billed_usd
        self._cluster_spent += billed_usd
        self.reserved_usd = max(0.0, self.reserved_usd - reservation.worst_usd)
        self._open.pop(reservation.name, None)
        self._queue(["settle", reservation.name, repr(billed_usd), self._channel])

    def _queue(self, args: list[str]) -> None:
        self._pending.append(args)
        self._pending_changed.set()

    async def run_writer(self) -> None:
        """Write settles and lowered reservations in order, and renew this worker's holds,
        until `close_writer()` and all is written."""
        loop = asyncio.get_running_loop()
        renew_every = self._hold_s / 4
        renew_at = loop.time() + renew_every
        while True:
            while self._pending:
                answer = await self._call(self._pending[0])
                self._pending.popleft()
                self._mirror(answer)
                self._room.set()  # what this worker gave back is in the tally now
            if self._closing:
                return
            if loop.time() >= renew_at:  # on time however busy the settles keep it
                if self._open:
                    self._mirror(await self._call(["renew", repr(self._hold_s), *self._open]))
                renew_at = loop.time() + renew_every
            self._pending_changed.clear()
            if self._pending:
                continue
            try:
                async with asyncio.timeout_at(renew_at):
                    await self._pending_changed.wait()
            except TimeoutError:
                pass

    def close_writer(self) -> None:
        """Nothing more will be queued: `run_writer()` ends once all is written."""
        self._closing = True
        self._pending_changed.set()

    # ------------------------------------------------------------- Redis
    def _mirror(self, answer: TallyAnswer) -> None:
        # The tally as the script left it, plus what this worker settled since, unwritten.
        unwritten = [float(args[2]) for args in self._pending if args[0] == "settle"]
        self._cluster_spent = answer.spent_usd + sum(unwritten)
        self.reserved_usd = answer.reserved_usd

    async def _call(self, args: list[str]) -> TallyAnswer:
        async def attempt() -> object:
            return await self._script(keys=self._keys, args=args, client=self._redis)

        async def failed(_error: Exception) -> None:
            return None

        try:
            raw = await DeadlineRetry(self._retry_for_s).call_with_retry(attempt, failed)
        except (RedisConnectionError, RedisTimeoutError) as exc:
            raise SharedBudgetUnavailable(
                f"shared spend budget: Redis did not answer for {self._retry_for_s:g}s ({exc})"
            ) from exc
        assert isinstance(raw, list)
        return TallyAnswer.parse(raw)
