"""Requests to Redis asked for while a call is out, sent together in the next call.

A busy worker asks Redis for the same thing many times a millisecond — a
reservation of budget, the settling of a batch — and each script call costs
it a round trip and, in CPU, more than the request it is for (packing the
command, reading the reply, waking the task).  `CallCoalescer` sends the
requests asked for one call at a time: the first goes at once, alone; those
asked while it is out wait for it and go together in the next.  An idle
worker pays nothing to wait; a busy one pays one call for many.

Each asker awaits its own answer.  The call's failure is each asker's; an
asker cancelled before its request is sent sends nothing, and one cancelled
while it is out leaves its answer to `unclaimed` (a reservation there is
given back).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

__all__ = ["CallCoalescer"]

Request = TypeVar("Request")
Answer = TypeVar("Answer")


@dataclass(frozen=True, slots=True, eq=False)
class _Asked(Generic[Request, Answer]):
    request: Request
    answer: asyncio.Future[Answer]


class CallCoalescer(Generic[Request, Answer]):
    """`ask(request)` through `send(requests)`, one call at a time.

    `send` answers its requests in order; `together` says which requests may
    share a call (the same key: one call each, in turn); `unclaimed` is told
    of an answer whose asker was cancelled while it was out; `idle` once no
    call is out and nothing waits.
    """

    def __init__(
        self,
        send: Callable[[list[Request]], Awaitable[Sequence[Answer]]],
        *,
        together: Callable[[Request], Hashable] = lambda _request: None,
        unclaimed: Callable[[Request, Answer], None] = lambda _request, _answer: None,
        idle: Callable[[], None] = lambda: None,
    ) -> None:
        self._send = send
        self._together = together
        self._unclaimed = unclaimed
        self._idle = idle
        self._asked: list[_Asked[Request, Answer]] = []
        self._sending: asyncio.Task[None] | None = None

    @property
    def busy(self) -> bool:
        """A call is out, or requests wait for one."""
        return self._sending is not None

    async def ask(self, request: Request) -> Answer:
        """`request`'s answer, sent with the others asked meanwhile."""
        asked: _Asked[Request, Answer] = _Asked(request, asyncio.get_running_loop().create_future())
        self._asked.append(asked)
        if self._sending is None:
            self._sending = asyncio.ensure_future(self._send_all())
        return await asked.answer  # cancelled: the future is, and `_send_all` sees it

    async def _send_all(self) -> None:
        out: list[_Asked[Request, Answer]] = []
        try:
            while self._asked:
                out, self._asked = [a for a in self._asked if not a.answer.done()], []
                calls: dict[Hashable, list[_Asked[Request, Answer]]] = {}
                for asked in out:
                    calls.setdefault(self._together(asked.request), []).append(asked)
                for call in calls.values():
                    await self._call(call)
        finally:
            self._sending = None
            for asked in [*out, *self._asked]:  # cancelled with requests out: theirs too
                asked.answer.cancel()  # (a no-op for those answered)
            self._idle()

    async def _call(self, call: list[_Asked[Request, Answer]]) -> None:
        try:
            answers = await self._send([asked.request for asked in call])
        except Exception as exc:  # each asker raises it as its own
            for asked in call:
                if not asked.answer.done():
                    asked.answer.set_exception(exc)
            return
        for asked, answer in zip(call, answers, strict=True):
            if asked.answer.done():  # its asker was cancelled while it was out
                self._unclaimed(asked.request, answer)
            else:
                asked.answer.set_result(answer)
