"""Calling OpenAI-compatible providers: JSON over one shared HTTP pool.

The hot path is one `aiohttp` session — the transport the SDK itself
offers for concurrency (`openai.DefaultAioHttpClient`) — shared by every
key; a call posts the JSON body itself and reads the answer with `json`.
Flat out against a local provider, a loop posting through it spent
0.23–0.34 ms of CPU a request where the same loop through
`httpx2.AsyncClient` spent 0.86–1.12 (three alternating rounds): httpcore2's
pool and h11's header checks are Python, aiohttp's parser is C.  The
Batch API's few calls keep `httpx2` (`BatchClient`).  Measured side by side
(`python -m tests.benchmarks.engine_cpu`),
the SDK's `with_raw_response.create` + `.parse()` spent more CPU per request
than everything else in the engine together — most of it turning our plain
dicts into its typed dicts and back, and building models we read three
fields of — and importing it cost ~0.5 s before the first request.  What the
engine needs of the SDK, it keeps: the same endpoints, bodies and headers,
and the SDK's reading of a failed call (which status is which error, where
an error's message and code are) in `classify_status`.  Nothing retries on
its own: every attempt passes our limiter.

Every outcome becomes a `CallResult` or a `CallFailure` with a kind the
dispatcher acts on; exceptions never escape a call.  Everything a provider
says — error messages, headers, answer content — passes through the job's
`Redactor` here, before anything else sees it: a provider that echoes the
key it was sent leaks nothing into the store, events, status or logs.
"""

from __future__ import annotations

import asyncio
import base64
import json
import math
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import aiohttp
import httpx2
import numpy as np
from numpy.typing import NDArray

from engine.config.setting_bounds import CONCURRENCY
from engine.provider.batch_client import BatchClient
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

SERVER_SIDE = frozenset({FailureKind.SERVER, FailureKind.TIMEOUT, FailureKind.CONNECTION})
"""The provider's failures: it erred (5xx), dropped the connection, or never answered.
(A 429 is a limit, not a failure; a malformed body is the model's, not the server's.)"""


@dataclass(frozen=True, slots=True)
class CallResult:
    content: str | None
    prompt_tokens: int
    completion_tokens: int
    headers: Mapping[str, str]
    latency_s: float
    cost_usd: float | None = None  # what the provider says the answer cost (`usage.cost`)


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


def _transport_failure(exc: BaseException, timeout_s: float, latency: float) -> CallFailure:
    """What a call that got no status means: a timeout (ours or the
    transport's) or a broken connection, told by the exception's type name,
    as the SDK's `APITimeoutError` / `APIConnectionError` would."""
    # aiohttp's read and connect timeouts are `TimeoutError`s too.
    if isinstance(exc, TimeoutError | httpx2.TimeoutException):
        return CallFailure(FailureKind.TIMEOUT, f"timed out after {timeout_s:g}s", {}, latency)
    return CallFailure(
        FailureKind.CONNECTION, f"connection failed ({type(exc).__name__})", {}, latency
    )


def _reported_cost(value: object) -> float | None:
    """An answer's `usage.cost` (OpenRouter's, in dollars) when it is a usable number."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    cost = float(value)
    return cost if math.isfinite(cost) and cost >= 0 else None


def _error_field(body: object, name: str) -> str:
    if isinstance(body, dict):
        err = body.get("error", body)
        if isinstance(err, dict):
            value = err.get(name)
            return str(value) if value is not None else ""
    return ""


def _error_body(content: bytes) -> object:
    """An error response's body as the SDK reads it: JSON if it parses, else its text."""
    text = content.decode("utf-8", "replace").strip()
    try:
        return json.loads(text)
    except ValueError:
        return text


def classify_status(
    status: int,
    headers: Mapping[str, str],
    body: object,
    latency: float,
    redactor: Redactor = _NO_SECRETS,
) -> CallFailure:
    """The failure an error status means, its message and headers redacted.

    `body` is the response's JSON (or its text when it is not JSON).  The
    message is the body's `error.message`, else "Error code: N", as in the
    SDK's exceptions; `error.code` and `error.type` tell a spent quota and a
    tokens limit from the rest.
    """
    headers = redactor.redact_headers(headers)
    code = _error_field(body, "code")
    err_type = _error_field(body, "type")
    # Redacted before it is cut short: a cut must not leave part of a key behind.
    raw = (_error_field(body, "message") or f"Error code: {status}")[:_MESSAGE_READ]
    message = redactor.redact_message(raw)
    if status == 429:
        if "insufficient_quota" in (code, err_type):
            return CallFailure(FailureKind.QUOTA, message[:200], headers, latency)
        if "too large" in message.lower():
            # Bigger than the whole per-minute budget: waiting can never help, a
            # smaller request can (the dispatcher splits the batch).
            return CallFailure(FailureKind.BAD_REQUEST, message[:200], headers, latency)
        rate_kind = "tokens" if err_type == "tokens" or "(TPM)" in message else "requests"
        # Kept long enough for the wait OpenAI states last ("... Please try again in
        # 120ms."), after a long model name and organization.
        return CallFailure(FailureKind.RATE_LIMITED, message[:400], headers, latency, rate_kind)
    if status in (401, 403):
        return CallFailure(FailureKind.AUTH, f"HTTP {status}: {message[:160]}", headers, latency)
    if status >= 500:
        return CallFailure(FailureKind.SERVER, f"HTTP {status}: {message[:160]}", headers, latency)
    if status in (408, 409):
        return CallFailure(FailureKind.SERVER, f"HTTP {status}: {message[:160]}", headers, latency)
    return CallFailure(FailureKind.BAD_REQUEST, f"HTTP {status}: {message[:160]}", headers, latency)


# Embedding requests for the drift monitor are not counted in concurrency.
_EMBEDDING_HEADROOM = 64

_JSON_HEADERS = {"Content-Type": "application/json", "Accept": "application/json"}


class _NotAnAnswer(Exception):
    """A 2xx body that is not what was asked for (told apart from transport errors)."""


def _not_a_completion(
    exc: BaseException, headers: Mapping[str, str], latency_s: float
) -> CallFailure:
    return CallFailure(
        FailureKind.MALFORMED,
        f"response body is not a chat completion ({type(exc).__name__})",
        headers,
        latency_s,
    )


def chat_body(
    model: str,
    messages: list[dict[str, str]],
    temperature: float | None,
    max_tokens: int | None = None,
) -> dict[str, Any]:
    """The body of a chat completion request: the same online and in a batch's input file.

    `max_tokens` caps the answer (a budgeted job sends it)."""
    body: dict[str, Any] = {"model": model, "messages": messages}
    if temperature is not None:
        body["temperature"] = temperature
    if max_tokens is not None:
        body["max_tokens"] = max_tokens
    return body


@dataclass(frozen=True, slots=True)
class _Route:
    """Where one key's calls go and the headers they carry (the secret among them)."""

    chat_url: str
    embeddings_url: str
    headers: Mapping[str, str]
    base_url: str
    secret: str = field(repr=False)
    proxy: str | None = None  # the proxy the environment names for it


def _env_proxy(url: str) -> str | None:
    """The proxy the environment names for `url` (`HTTPS_PROXY`, `HTTP_PROXY`,
    `ALL_PROXY`, less `NO_PROXY`'s hosts), as httpx2 reads them.

    Read once per key rather than by aiohttp's `trust_env`, which also looks
    for a `.netrc` login before every request, in a thread: ~40 % of the
    engine's CPU flat out."""
    parts = urllib.parse.urlsplit(url)
    if urllib.request.proxy_bypass(parts.hostname or ""):
        return None
    proxies = urllib.request.getproxies()
    return proxies.get(parts.scheme) or proxies.get("all")


# What the engine reads of an answer's headers: its limits, when to retry, the
# provider's own time and its request id (for a support ticket).  An answer
# keeps only these: the rest is never looked at, so never needs redacting —
# on the hot path, that was most of the redaction's cost.
_ANSWER_HEADERS = frozenset(
    name.encode()
    for name in (
        "x-ratelimit-limit-requests",
        "x-ratelimit-limit-tokens",
        "x-ratelimit-remaining-requests",
        "x-ratelimit-remaining-tokens",
        "x-ratelimit-reset-requests",
        "x-ratelimit-reset-tokens",
        "retry-after",
        "retry-after-ms",
        "openai-processing-ms",
        "x-request-id",
    )
)


# One encoder for every request body (`json.dumps` with options makes one a call).
_BODY_JSON = json.JSONEncoder(ensure_ascii=False)


def _answer_headers(raw: tuple[tuple[bytes, bytes], ...]) -> dict[str, str]:
    """The headers of `_ANSWER_HEADERS` an answer carries, names lower-cased."""
    kept: dict[str, str] = {}
    for name, value in raw:
        lowered = name.lower()
        if lowered in _ANSWER_HEADERS:
            # latin-1 decodes any byte: a header value is never an error here.
            kept[lowered.decode("latin-1")] = value.decode("latin-1")
    return kept


def _all_headers(raw: tuple[tuple[bytes, bytes], ...]) -> dict[str, str]:
    """Every header of an error answer, names lower-cased; a repeated one's values
    joined by commas, as httpx2 reads them."""
    headers: dict[str, str] = {}
    for name, value in raw:
        lowered, text = name.decode("latin-1").lower(), value.decode("latin-1")
        headers[lowered] = f"{headers[lowered]}, {text}" if lowered in headers else text
    return headers


async def _headers_sent(_session: object, context: Any, _params: object) -> None:
    """aiohttp's trace of a request's headers going out: its `on_wire`, if it has one."""
    on_wire = context.trace_request_ctx
    if on_wire is not None:
        on_wire()


class ProviderClients:
    """The shared connection pool and, per key, where its calls go."""

    def __init__(self, max_connections: int = CONCURRENCY.high + _EMBEDDING_HEADROOM) -> None:
        # Room for every request the engine may have in flight at its highest
        # concurrency (plus drift embeddings, which run beside it): a smaller
        # pool would be a hidden queue that the concurrency control cannot see.
        # Connections are opened as needed and kept warm.
        # httpx2's CA certificates and environment (SSL_CERT_FILE, SSL_CERT_DIR)
        # for both transports, loaded once.
        self._tls = httpx2.create_ssl_context()
        self._max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None  # made in the loop, when first used
        # The Batch API's few calls (uploads, downloads, each open batch's polls).
        self._http = httpx2.AsyncClient(
            limits=httpx2.Limits(max_connections=32, max_keepalive_connections=32),
            timeout=httpx2.Timeout(60.0, connect=10.0),
            verify=self._tls,
        )
        self._routes: dict[str, _Route] = {}
        self._batch_clients: dict[str, BatchClient] = {}
        self._timeouts: dict[float, aiohttp.ClientTimeout] = {}
        self._closed = False
        self._redactor = Redactor()
        # The transport logs status lines and (at DEBUG) response headers when
        # an application turns its logging on: that is provider text too.
        # Put on the loggers by the first request and taken off by `aclose()`,
        # so clients that never send (an engine made and never run) leave none.
        self._log_filter = RedactingLogFilter(self._redactor)
        self._filtering = False

    def add_key(self, key_id: str, secret: str, base_url: str) -> None:
        self._redactor.add(secret)
        base = base_url.rstrip("/")
        self._routes[key_id] = _Route(
            chat_url=f"{base}/chat/completions",
            embeddings_url=f"{base}/embeddings",
            headers={**_JSON_HEADERS, "Authorization": f"Bearer {secret}"},
            base_url=base,
            secret=secret,
            proxy=_env_proxy(base),
        )

    def _timeout(self, seconds: float) -> aiohttp.ClientTimeout:
        # Per network phase, as the SDK's `timeout=` is: waiting for a connection
        # and opening it, then each read; made once per value.
        timeout = self._timeouts.get(seconds)
        if timeout is None:
            timeout = aiohttp.ClientTimeout(total=None, connect=seconds, sock_read=seconds)
            self._timeouts[seconds] = timeout
        return timeout

    def _pool(self) -> aiohttp.ClientSession:
        """The shared session: made on first use, inside the running loop, as aiohttp asks."""
        session = self._session
        if session is None:
            wire = aiohttp.TraceConfig()
            wire.on_request_headers_sent.append(_headers_sent)
            session = self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(
                    limit=self._max_connections,
                    limit_per_host=0,
                    # httpx's keep-alive: a connection idle longer may have been
                    # closed by the provider, and a request sent on it is lost.
                    keepalive_timeout=5.0,
                    ssl=self._tls,
                ),
                trace_configs=[wire],
            )
        return session

    async def _post(
        self,
        url: str,
        route: _Route,
        body: dict[str, Any],
        timeout_s: float,
        on_wire: Callable[[], None] | None = None,
    ) -> tuple[bytes, dict[str, str], float] | CallFailure:
        """POST `body` as JSON: the response's body, the headers the engine
        reads (redacted) and when it was sent — or the failure it came to (a
        status error is classified here).

        `on_wire` is called when the request's headers start on their way to
        the provider (after any wait for a connection, its TCP and TLS)."""
        if not self._filtering:
            self._filtering = True
            self._log_filter.install()
        started = time.monotonic()
        try:
            # The transport's timeout covers each network phase; the outer one
            # also catches a server that trickles bytes forever.
            async with (
                asyncio.timeout(timeout_s * 1.5 + 1.0),
                self._pool().post(
                    url,
                    data=_BODY_JSON.encode(body).encode(),
                    headers=route.headers,
                    timeout=self._timeout(timeout_s),
                    trace_request_ctx=on_wire,
                    proxy=route.proxy,
                    # As httpx2 and the SDK: a redirect is an answer to report, not to
                    # follow (aiohttp would resend a POST as a GET elsewhere).
                    allow_redirects=False,
                ) as response,
            ):
                content = await response.read()
                status, raw = response.status, response.raw_headers
        except Exception as exc:
            # Whatever the transport raises is a failed connection unless it is
            # a timeout — the SDK's rule too — and never escapes the call.
            return _transport_failure(exc, timeout_s, time.monotonic() - started)
        if not 200 <= status < 300:
            return classify_status(
                status,
                _all_headers(raw),
                _error_body(content),
                time.monotonic() - started,
                self._redactor,
            )
        return content, self._redactor.redact_headers(_answer_headers(raw)), started

    async def chat(
        self,
        key_id: str,
        model: str,
        messages: list[dict[str, str]],
        timeout_s: float,
        temperature: float | None = None,
        on_wire: Callable[[], None] | None = None,
        max_tokens: int | None = None,
    ) -> CallResult | CallFailure:
        """One chat completion of `messages` on the key's route (`on_wire`: see `_post`).

        `max_tokens` caps the answer (a budgeted job sends it, so a request's
        cost has a ceiling)."""
        route = self._routes[key_id]
        body = chat_body(model, messages, temperature, max_tokens)
        sent = await self._post(route.chat_url, route, body, timeout_s, on_wire)
        if isinstance(sent, CallFailure):
            return sent
        content, headers, started = sent
        try:
            answer = json.loads(content)
        except ValueError as exc:
            return _not_a_completion(exc, headers, time.monotonic() - started)
        return self.completion(answer, headers, time.monotonic() - started)

    def completion(
        self, answer: object, headers: Mapping[str, str], latency_s: float
    ) -> CallResult | CallFailure:
        """A chat completion's body (parsed JSON) read as the engine reads every answer —
        online or from a batch's output file — its content redacted; MALFORMED if it is
        not one."""
        try:
            assert isinstance(answer, dict)
            content = answer["choices"][0]["message"].get("content")
            if content is not None and not isinstance(content, str):
                raise _NotAnAnswer("content")
            usage = answer.get("usage") or {}
            prompt_tokens = int(usage.get("prompt_tokens") or 0)
            completion_tokens = int(usage.get("completion_tokens") or 0)
            cost = _reported_cost(usage.get("cost"))
        except (
            ValueError,
            LookupError,
            TypeError,
            AttributeError,
            AssertionError,
            _NotAnAnswer,
        ) as exc:
            return _not_a_completion(exc, headers, latency_s)
        if content:
            content = self._redactor.redact_content(content)
        return CallResult(content, prompt_tokens, completion_tokens, headers, latency_s, cost)

    def batch_client(self, key_id: str) -> BatchClient:
        """The Files and Batch APIs for one key, over the shared connection pool."""
        client = self._batch_clients.get(key_id)
        if client is None:
            if not self._filtering:  # the SDK's and transport's logs are provider text too
                self._filtering = True
                self._log_filter.install()
            route = self._routes[key_id]
            client = BatchClient(route.secret, route.base_url, self._http, self._redactor)
            self._batch_clients[key_id] = client
        return client

    @property
    def redactor(self) -> Redactor:
        """What masks the job's secrets in whatever a provider says."""
        return self._redactor

    async def embed(
        self, key_id: str, model: str, inputs: list[str], timeout_s: float
    ) -> EmbeddingResult | CallFailure:
        """Embeddings of `inputs` through the key's route: one request, one vector each."""
        route = self._routes[key_id]
        # base64 float32s, as the SDK asks for them: a quarter of the bytes of
        # decimal text, and decoded without a parse.
        body = {"model": model, "input": inputs, "encoding_format": "base64"}
        sent = await self._post(route.embeddings_url, route, body, timeout_s)
        if isinstance(sent, CallFailure):
            return sent
        content, headers, started = sent
        try:
            answer = json.loads(content)
            items = sorted(answer["data"], key=lambda item: item["index"])
            vectors = [_vector(item["embedding"]) for item in items]
            tokens = int((answer.get("usage") or {}).get("prompt_tokens") or 0)
        except (ValueError, LookupError, TypeError, AttributeError) as exc:
            return CallFailure(
                FailureKind.MALFORMED,
                f"response body is not an embeddings list ({type(exc).__name__})",
                headers,
                time.monotonic() - started,
            )
        if len(vectors) != len(inputs):
            return CallFailure(
                FailureKind.MALFORMED,
                f"{len(vectors)} embeddings for {len(inputs)} inputs",
                headers,
                time.monotonic() - started,
            )
        return EmbeddingResult(tuple(vectors), tokens, headers, time.monotonic() - started)

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            self._log_filter.uninstall()
            if self._session is not None:
                await self._session.close()
            await self._http.aclose()


def _vector(embedding: object) -> NDArray[np.float32]:
    """One embedding, sent as base64 little-endian float32s or as a list of numbers."""
    if isinstance(embedding, str):
        return np.frombuffer(base64.b64decode(embedding), dtype="<f4").astype(np.float32)
    if not isinstance(embedding, list):
        raise TypeError("embedding")
    return np.asarray(embedding, dtype=np.float32)
