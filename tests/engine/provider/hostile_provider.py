"""A hostile OpenAI-compatible provider on loopback: it echoes the key it was sent.

Every answer, good or bad, carries the key from the request's Authorization
header in its response headers (among them `x-request-id`, which the SDK
logs when OPENAI_LOG is set, and a `Bearer …` value) and in its HTTP reason
phrase.  Error bodies carry it in their message — whole, as its first 20
characters, and after "Bearer" — as OpenAI's own 401 once did.

What it answers is chosen by the key (`status_by_secret`: a key that always
gets 401, say) and otherwise by a marker in a chunk's text:

- `echo-status-400` / `-403` / `-500`: that error, every time;
- `echo-status-429`: a 429 the first time that chunk is asked for, then an
  answer (a 429 forever would keep a job running forever);
- `echo-in-answer`: a 200 whose content quotes the key in the chunk's result;
- `echo-held`: a plain answer, held back until `release()` (it keeps a job
  running while a test looks at it);
- anything else: a plain answer.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections import Counter
from collections.abc import Mapping
from typing import Any

from aiohttp import web

from engine.simulation.simulator import parse_chunks

_MARKER = re.compile(r"echo-(status-(\d{3})|in-answer|held)")
_ERRORS: dict[int, tuple[str, str]] = {  # status → (type, code)
    400: ("invalid_request_error", "invalid_value"),
    401: ("invalid_request_error", "invalid_api_key"),
    403: ("permission_denied", "unsupported_country_region_territory"),
    429: ("requests", "rate_limit_exceeded"),
    500: ("server_error", "server_error"),
}


def echo_message(status: int, secret: str) -> str:
    """An error message that quotes the key three ways."""
    return (
        f"Incorrect API key provided: {secret}. It begins {secret[:20]}; "
        f"it was sent as Bearer {secret} (status {status})."
    )


def echo_headers(secret: str) -> dict[str, str]:
    """Response headers that quote the key, next to ordinary rate-limit headers."""
    return {
        "x-request-id": secret,
        "x-echo-key": secret,
        "x-echo-key-start": secret[:20],
        "www-authenticate": f"Bearer {secret}",
        "x-ratelimit-limit-requests": "100000",
        "x-ratelimit-remaining-requests": "99999",
        "x-ratelimit-limit-tokens": "100000000",
        "x-ratelimit-remaining-tokens": "99999000",
    }


class HostileProvider:
    """Serve the hostile provider on 127.0.0.1; `base_url` once started."""

    def __init__(self, status_by_secret: Mapping[str, int] | None = None) -> None:
        self.status_by_secret = dict(status_by_secret or {})
        self.served: Counter[str] = Counter()  # "401", "200", "200-echo", "embeddings-200"…
        self._released = asyncio.Event()
        self._served_more = asyncio.Event()
        self._asked_429: set[str] = set()
        self._runner: web.AppRunner | None = None
        self.base_url = ""

    async def start(self) -> str:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_post("/v1/embeddings", self._embeddings)
        self._runner = web.AppRunner(app, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.base_url = f"http://127.0.0.1:{port}/v1"
        return self.base_url

    async def stop(self) -> None:
        self.release()
        if self._runner is not None:
            await self._runner.cleanup()

    async def wait_until_served(self, *kinds: str) -> None:
        """Until each of `kinds` ("401", "200-echo"…) has been served at least once."""
        while not all(self.served[kind] for kind in kinds):
            self._served_more.clear()
            await self._served_more.wait()

    def _count(self, kind: str) -> None:
        self.served[kind] += 1
        self._served_more.set()

    def release(self) -> None:
        """Let the held answers go."""
        self._released.set()

    async def _chat(self, request: web.Request) -> web.Response:
        secret = _secret_of(request)
        body = await request.json()
        user = next(m["content"] for m in reversed(body["messages"]) if m["role"] == "user")
        chunks = parse_chunks(user)
        status = self.status_by_secret.get(secret)
        echo_in_answer = held = False
        for chunk_id, text in chunks:
            marker = _MARKER.search(text)
            if marker is None or status is not None:
                continue
            if marker.group(1) == "held":
                held = True
            elif marker.group(1) == "in-answer":
                echo_in_answer = True
            elif marker.group(2) != "429" or chunk_id not in self._asked_429:
                status = int(marker.group(2))
                self._asked_429.add(chunk_id)
        if status is not None:
            return self._error(status, secret)
        if held:
            await self._released.wait()
        results = [
            {
                "id": chunk_id,
                "summary": (
                    f"the key is {secret}, it begins {secret[:20]}" if echo_in_answer else "fine"
                ),
            }
            for chunk_id, _ in chunks
        ]
        self._count("200-echo" if echo_in_answer else "200")
        completion: dict[str, Any] = {
            "id": "chatcmpl-hostile",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body["model"],
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": json.dumps({"results": results})},
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 50, "completion_tokens": 20, "total_tokens": 70},
        }
        return web.json_response(completion, headers=echo_headers(secret), reason=f"OK {secret}")

    async def _embeddings(self, request: web.Request) -> web.Response:
        secret = _secret_of(request)
        status = self.status_by_secret.get(secret)
        if status is not None:
            return self._error(status, secret)
        body = await request.json()
        inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
        self._count("embeddings-200")
        answer = {
            "object": "list",
            "data": [
                {"object": "embedding", "index": i, "embedding": [0.5, 0.25, 0.125]}
                for i in range(len(inputs))
            ],
            "model": body["model"],
            "usage": {"prompt_tokens": 5, "total_tokens": 5},
        }
        return web.json_response(answer, headers=echo_headers(secret), reason=f"OK {secret}")

    def _error(self, status: int, secret: str) -> web.Response:
        self._count(str(status))
        err_type, code = _ERRORS[status]
        headers = echo_headers(secret)
        if status == 429:
            headers["retry-after-ms"] = "20"
        body = {
            "error": {
                "message": echo_message(status, secret),
                "type": err_type,
                "param": None,
                "code": code,
            }
        }
        return web.json_response(body, status=status, headers=headers, reason=f"Echo {secret}")


def _secret_of(request: web.Request) -> str:
    _, _, secret = request.headers.get("Authorization", "").partition(" ")
    return secret.strip()
