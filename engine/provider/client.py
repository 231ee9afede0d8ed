"""Calling OpenAI-compatible providers through the official SDK.

One `httpx2.AsyncClient` is the connection pool for every key; each key has
its own `AsyncOpenAI` on top of it with `max_retries=0`, so every attempt
passes our limiter (the SDK's own retries would bypass it and even retry
`insufficient_quota`).  Closing a per-key client would close the shared
pool, so only the shared client is closed, once.

Every outcome becomes a `CallResult` or a `CallFailure` with a kind the
dispatcher acts on; exceptions never escape a call.  Everything a provider
says — error messages, headers, answer content — passes through the job's
`Redactor` here, before anything else sees it: a provider that echoes the
key it was sent leaks nothing into the store, events, status or logs.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import httpx2
import numpy as np
import openai
from numpy.typing import NDArray

from engine.config.setting_bounds import CONCURRENCY
from engine.provider.redaction import RedactingLogFilter, Redactor


class FailureKind(StrEnum):
    RATE_LIMITED = "rate_limited"  # 429: cool the key down, requeue, not a failed attempt
    QUOTA = "insufficient_quota"  # the key is out of money: disable it
    AUTH = "auth"  # 401/403: the key is wrong: disable it
    SERVER = "server_error"  # 5xx
    TIMEOUT = "timeout"
    CONNECTION = "connection"  # resets, refused, protocol errors
    MALFORMED = "malformed"  # a body that is not a chat completion
    BAD_REQUEST = "bad_request"  # 4xx other than the above: retrying the same won't help


RETRYABLE = {FailureKind.SERVER, FailureKind.TIMEOUT, FailureKind.CONNECTION, FailureKind.MALFORMED}


@dataclass(frozen=True, slots=True)
class CallResult:
    content: str | None
    prompt_tokens: int
    completion_tokens: int
    headers: Mapping[str, str]
    latency_s: float


@dataclass(frozen=True, slots=True)
class EmbeddingResult:
    vectors: tuple[NDArray[np.float32], ...]
    prompt_tokens: int
    headers: Mapping[str, str]
    latency_s: float


@dataclass(frozen=True, slots=True)
class CallFailure:
    kind: FailureKind
    message: str
    headers: Mapping[str, str]
    latency_s: float
    rate_kind: str = "requests"  # for 429s: "requests" or "tokens"


_NO_SECRETS = Redactor()  # still masks whatever is shaped like a key
# Of an error's text only the start is kept; reading no more than this of it
# keeps a provider that answers with megabytes of error from costing much.
_MESSAGE_READ = 4096


def _failure_of(
    exc: BaseException, timeout_s: float, latency: float, redactor: Redactor
) -> CallFailure:
    """What an SDK exception (or our own outer timeout) means for the request.

    Only status errors carry provider text; the others are told by type name.
    """
    if isinstance(exc, TimeoutError | openai.APITimeoutError):
        return CallFailure(FailureKind.TIMEOUT, f"timed out after {timeout_s:g}s", {}, latency)
    if isinstance(exc, openai.APIStatusError):
        return classify_status_error(exc, latency, redactor)
    if isinstance(exc, openai.APIConnectionError):
        cause = exc.__cause__ or exc
        return CallFailure(
            FailureKind.CONNECTION, f"connection failed ({type(cause).__name__})", {}, latency
        )
    # e.g. a response the SDK could not read at all
    return CallFailure(
        FailureKind.MALFORMED, f"unreadable response ({type(exc).__name__})", {}, latency
    )


def _error_field(body: object, name: str) -> str:
    if isinstance(body, dict):
        err = body.get("error", body)
        if isinstance(err, dict):
            value = err.get(name)
            return str(value) if value is not None else ""
    return ""


def classify_status_error(
    exc: openai.APIStatusError, latency: float, redactor: Redactor = _NO_SECRETS
) -> CallFailure:
    """The failure an error status means, its message and headers redacted."""
    headers = redactor.redact_headers(exc.response.headers)
    code = _error_field(exc.body, "code")
    err_type = _error_field(exc.body, "type")
    # Redacted before it is cut short: a cut must not leave part of a key behind.
    raw = (_error_field(exc.body, "message") or str(exc))[:_MESSAGE_READ]
    message = redactor.redact_message(raw)
    status = exc.status_code
    if status == 429:
        if "insufficient_quota" in (code, err_type):
            return CallFailure(FailureKind.QUOTA, message[:200], headers, latency)
        if "too large" in message.lower():
            # Bigger than the whole per-minute budget: waiting can never help, a
            # smaller request can (the dispatcher splits the batch).
            return CallFailure(FailureKind.BAD_REQUEST, message[:200], headers, latency)
        rate_kind = "tokens" if err_type == "tokens" or "(TPM)" in message else "requests"
        return CallFailure(FailureKind.RATE_LIMITED, message[:200], headers, latency, rate_kind)
    if status in (401, 403):
        return CallFailure(FailureKind.AUTH, f"HTTP {status}: {message[:160]}", headers, latency)
    if status >= 500:
        return CallFailure(FailureKind.SERVER, f"HTTP {status}: {message[:160]}", headers, latency)
    if status in (408, 409):
        return CallFailure(FailureKind.SERVER, f"HTTP {status}: {message[:160]}", headers, latency)
    return CallFailure(FailureKind.BAD_REQUEST, f"HTTP {status}: {message[:160]}", headers, latency)


# Embedding requests for the drift monitor are not counted in concurrency.
_EMBEDDING_HEADROOM = 64


class ProviderClients:
    """The shared connection pool and one SDK client per key."""

    def __init__(self, max_connections: int = CONCURRENCY.high + _EMBEDDING_HEADROOM) -> None:
        # Room for every request the engine may have in flight at its highest
        # concurrency (plus drift embeddings, which run beside it): a smaller
        # pool would be a hidden queue that the concurrency control cannot see.
        # Connections are opened as needed and kept warm.
        self._http = httpx2.AsyncClient(
            limits=httpx2.Limits(
                max_connections=max_connections, max_keepalive_connections=max_connections
            ),
            timeout=httpx2.Timeout(60.0, connect=10.0),
        )
        self._clients: dict[str, openai.AsyncOpenAI] = {}
        self._closed = False
        self._redactor = Redactor()
        # The SDK logs a response header (the request id) when OPENAI_LOG is
        # set, and the transport logs status lines: those logs are provider text too.
        # Put on the loggers by the first request and taken off by `aclose()`,
        # so clients that never send (an engine made and never run) leave none.
        self._log_filter = RedactingLogFilter(self._redactor)
        self._filtering = False

    def add_key(self, key_id: str, secret: str, base_url: str) -> None:
        self._redactor.add(secret)
        self._clients[key_id] = openai.AsyncOpenAI(
            api_key=secret, base_url=base_url, max_retries=0, http_client=self._http
        )

    def _filter_logs(self) -> None:
        self._filtering = True
        self._log_filter.install()

    async def chat(
        self,
        key_id: str,
        model: str,
        messages: list[dict[str, str]],
        timeout_s: float,
        temperature: float | None = None,
    ) -> CallResult | CallFailure:
        client = self._clients[key_id]
        if not self._filtering:
            self._filter_logs()
        started = time.monotonic()
        extra: dict[str, Any] = {}
        if temperature is not None:
            extra["temperature"] = temperature
        try:
            # The SDK's timeout covers each network phase; the outer one also
            # catches a server that trickles bytes forever.
            async with asyncio.timeout(timeout_s * 1.5 + 1.0):
                raw = await client.chat.completions.with_raw_response.create(
                    model=model,
                    messages=messages,  # type: ignore[arg-type]
                    timeout=timeout_s,
                    **extra,
                )
                headers = self._redactor.redact_headers(raw.headers)
                try:
                    completion = raw.parse()
                    content = completion.choices[0].message.content
                    if content:
                        content = self._redactor.redact_content(content)
                    usage = completion.usage
                except Exception as exc:  # the body is not a chat completion
                    return CallFailure(
                        FailureKind.MALFORMED,
                        f"response body is not a chat completion ({type(exc).__name__})",
                        headers,
                        time.monotonic() - started,
                    )
        except (TimeoutError, openai.APIError) as exc:
            return _failure_of(exc, timeout_s, time.monotonic() - started, self._redactor)
        latency = time.monotonic() - started
        prompt_tokens = usage.prompt_tokens if usage else 0
        completion_tokens = usage.completion_tokens if usage else 0
        return CallResult(content, prompt_tokens, completion_tokens, headers, latency)

    async def embed(
        self, key_id: str, model: str, inputs: list[str], timeout_s: float
    ) -> EmbeddingResult | CallFailure:
        """Embeddings of `inputs` through the key's client: one request, one vector each."""
        client = self._clients[key_id]
        if not self._filtering:
            self._filter_logs()
        started = time.monotonic()
        try:
            async with asyncio.timeout(timeout_s * 1.5 + 1.0):
                raw = await client.embeddings.with_raw_response.create(
                    model=model, input=inputs, timeout=timeout_s
                )
                headers = self._redactor.redact_headers(raw.headers)
                try:
                    answer = raw.parse()
                    vectors = [
                        np.asarray(item.embedding, dtype=np.float32)
                        for item in sorted(answer.data, key=lambda item: item.index)
                    ]
                except Exception as exc:  # the body is not an embeddings list
                    return CallFailure(
                        FailureKind.MALFORMED,
                        f"response body is not an embeddings list ({type(exc).__name__})",
                        headers,
                        time.monotonic() - started,
                    )
        except (TimeoutError, openai.APIError) as exc:
            return _failure_of(exc, timeout_s, time.monotonic() - started, self._redactor)
        if len(vectors) != len(inputs):
            return CallFailure(
                FailureKind.MALFORMED,
                f"{len(vectors)} embeddings for {len(inputs)} inputs",
                headers,
                time.monotonic() - started,
            )
        tokens = answer.usage.prompt_tokens if answer.usage else 0
        return EmbeddingResult(tuple(vectors), tokens, headers, time.monotonic() - started)

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            self._log_filter.uninstall()
            await self._http.aclose()
