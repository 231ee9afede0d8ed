"""How provider answers become outcomes the dispatcher acts on (real transport, real simulator)."""

from __future__ import annotations

import json
import logging
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import httpx2
import numpy as np
import pytest
from aiohttp import web

from engine.provider.client import (
    CallFailure,
    CallResult,
    EmbeddingResult,
    FailureKind,
    ProviderClients,
)
from engine.provider.redaction import mask_secret
from tests.engine.conftest import sim_keys, tls_server
from tests.engine.provider.hostile_provider import HostileProvider

MESSAGES = [{"role": "user", "content": "[id=a] hello there\n[id=b] general kenobi"}]


async def test_an_answer_carries_usage_and_rate_headers(simulator) -> None:
    sim = await simulator(keys=sim_keys([("k", 600, 100_000)]))
    clients = ProviderClients()
    clients.add_key("sim/k", "secret-k", sim.base_url)
    try:
        outcome = await clients.chat("sim/k", "gpt-4o-mini", MESSAGES, timeout_s=5)
    finally:
        await clients.aclose()

    assert isinstance(outcome, CallResult)
    assert outcome.prompt_tokens > 0 and outcome.completion_tokens > 0
    assert outcome.headers["x-ratelimit-limit-requests"] == "600"


async def test_a_request_larger_than_the_whole_token_limit_is_a_bad_request(simulator) -> None:
    sim = await simulator(keys=sim_keys([("k", 600, 5)]))
    clients = ProviderClients()
    clients.add_key("sim/k", "secret-k", sim.base_url)
    try:
        outcome = await clients.chat("sim/k", "gpt-4o-mini", MESSAGES, timeout_s=5)
    finally:
        await clients.aclose()

    assert isinstance(outcome, CallFailure)
    assert outcome.kind is FailureKind.BAD_REQUEST  # waiting for the budget would never help


async def test_quota_auth_and_server_errors_are_told_apart(simulator) -> None:
    keys = sim_keys([("ok", 600, 100_000), ("broke", 600, 100_000)])
    from dataclasses import replace

    sim = await simulator(keys=(keys[0], replace(keys[1], quota_exhausted=True)))
    clients = ProviderClients()
    clients.add_key("sim/broke", "secret-broke", sim.base_url)
    clients.add_key("sim/wrong", "not-a-key", sim.base_url)
    clients.add_key("sim/ok", "secret-ok", sim.base_url)
    try:
        quota = await clients.chat("sim/broke", "gpt-4o-mini", MESSAGES, timeout_s=5)
        auth = await clients.chat("sim/wrong", "gpt-4o-mini", MESSAGES, timeout_s=5)
        sim.set_faults(fault_5xx=1.0)
        server = await clients.chat("sim/ok", "gpt-4o-mini", MESSAGES, timeout_s=5)
        sim.set_faults(fault_5xx=0.0, fault_reset=1.0)
        reset = await clients.chat("sim/ok", "gpt-4o-mini", MESSAGES, timeout_s=5)
        sim.set_faults(fault_reset=0.0, fault_hang=1.0, hang_s=30)
        hang = await clients.chat("sim/ok", "gpt-4o-mini", MESSAGES, timeout_s=0.3)
    finally:
        await clients.aclose()

    assert isinstance(quota, CallFailure) and quota.kind is FailureKind.QUOTA
    assert isinstance(auth, CallFailure) and auth.kind is FailureKind.AUTH
    assert "not-a-key" not in auth.message
    assert isinstance(server, CallFailure) and server.kind is FailureKind.SERVER
    assert isinstance(reset, CallFailure) and reset.kind is FailureKind.CONNECTION
    assert isinstance(hang, CallFailure) and hang.kind is FailureKind.TIMEOUT


# --------------------------------------------------------------------------
# A provider that echoes the key: nothing it says reaches us unredacted

ECHOED = "sk-proj-" + "Hq4wN7xB2mK9vT5rL8cZ3jP6sY1dG0fA"
ECHOED_HINT = mask_secret(ECHOED)


def leaks(text: str, secret: str = ECHOED) -> list[str]:
    """Every fragment of `secret` of eight characters or more found in `text`."""
    return [secret[i : i + 8] for i in range(len(secret) - 7) if secret[i : i + 8] in text]


@pytest.fixture
async def hostile() -> AsyncIterator[HostileProvider]:
    provider = HostileProvider()
    await provider.start()
    try:
        yield provider
    finally:
        await provider.stop()


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (400, FailureKind.BAD_REQUEST),
        (401, FailureKind.AUTH),
        (403, FailureKind.AUTH),
        (429, FailureKind.RATE_LIMITED),
        (500, FailureKind.SERVER),
    ],
)
async def test_an_error_that_echoes_the_key_keeps_its_kind_and_shows_only_the_hint(
    hostile: HostileProvider, status: int, kind: FailureKind
) -> None:
    hostile.status_by_secret[ECHOED] = status
    clients = ProviderClients()
    clients.add_key("hostile/k", ECHOED, hostile.base_url)
    try:
        outcome = await clients.chat("hostile/k", "gpt-4o-mini", MESSAGES, timeout_s=5)
    finally:
        await clients.aclose()

    assert hostile.served[str(status)] == 1
    assert isinstance(outcome, CallFailure)
    assert outcome.kind is kind
    assert ECHOED_HINT in outcome.message
    assert leaks(outcome.message) == []
    assert leaks(repr(outcome.headers)) == []
    assert outcome.headers["x-request-id"] == ECHOED_HINT
    assert outcome.headers["www-authenticate"] == f"Bearer {ECHOED_HINT}"
    if status == 429:
        assert outcome.headers["retry-after-ms"] == "20"  # what the engine acts on is kept


async def test_an_answer_that_echoes_the_key_in_content_and_headers_is_redacted(
    hostile: HostileProvider,
) -> None:
    clients = ProviderClients()
    clients.add_key("hostile/k", ECHOED, hostile.base_url)
    echoing = [{"role": "user", "content": "[id=a] echo-in-answer please"}]
    try:
        outcome = await clients.chat("hostile/k", "gpt-4o-mini", echoing, timeout_s=5)
    finally:
        await clients.aclose()

    assert hostile.served["200-echo"] == 1
    assert isinstance(outcome, CallResult)
    assert outcome.content is not None
    assert leaks(outcome.content) == [] and leaks(repr(outcome.headers)) == []
    assert json.loads(outcome.content)["results"][0]["summary"] == (
        f"the key is {ECHOED_HINT}, it begins {ECHOED_HINT}"
    )
    assert outcome.headers["x-ratelimit-remaining-requests"] == "99999"
    assert outcome.headers["x-request-id"] == ECHOED_HINT
    # An answer keeps only what the engine reads: the echoing extras never enter.
    assert "x-echo-key" not in outcome.headers and "www-authenticate" not in outcome.headers


async def test_the_embeddings_path_is_redacted_too(hostile: HostileProvider) -> None:
    clients = ProviderClients()
    clients.add_key("hostile/k", ECHOED, hostile.base_url)
    revoked = ECHOED[::-1]
    clients.add_key("hostile/revoked", revoked, hostile.base_url)
    hostile.status_by_secret[revoked] = 401
    try:
        answer = await clients.embed("hostile/k", "text-embedding-3-small", ["a", "b"], 5)
        refused = await clients.embed("hostile/revoked", "text-embedding-3-small", ["a"], 5)
    finally:
        await clients.aclose()

    assert isinstance(answer, EmbeddingResult) and len(answer.vectors) == 2
    assert answer.headers["x-request-id"] == ECHOED_HINT
    assert isinstance(refused, CallFailure) and refused.kind is FailureKind.AUTH
    assert mask_secret(revoked) in refused.message
    assert leaks(refused.message, revoked) == []


async def test_the_transports_debug_log_shows_the_hint_not_the_echoed_key(
    hostile: HostileProvider, caplog: pytest.LogCaptureFixture
) -> None:
    # What a DEBUG root logger would print while calls are made: whatever the
    # transports log of an answer that echoes the key (aiohttp's client logs no
    # answer; httpx2's, under the Batch API, logs status lines and headers).
    caplog.set_level(logging.DEBUG)
    hostile.status_by_secret[ECHOED] = 401
    clients = ProviderClients()
    clients.add_key("hostile/k", ECHOED, hostile.base_url)
    try:
        await clients.chat("hostile/k", "gpt-4o-mini", MESSAGES, timeout_s=5)
        for name in ("aiohttp.client", "httpcore2.http11", "httpx2"):
            logging.getLogger(name).debug("receive_response_headers %r", [(b"x", ECHOED.encode())])
            logging.getLogger(name).info('"HTTP/1.1 401 Echo %s"', ECHOED)
    finally:
        await clients.aclose()

    ours = [r for r in caplog.records if not r.name.startswith("aiohttp.access")]
    logged = "\n".join(record.getMessage() for record in ours)
    assert logged.count(f"(b'x', b'{ECHOED_HINT}')") == 3
    assert logged.count(f'"HTTP/1.1 401 Echo {ECHOED_HINT}"') == 3
    assert leaks(logged) == []


# --------------------------------------------------------------------------
# Bodies the SDK used to read for us: what each comes to now


async def test_embeddings_asked_as_base64_are_the_vectors_a_plain_request_gets(
    simulator,
) -> None:
    sim = await simulator(keys=sim_keys([("k", 600, 100_000)]))
    clients = ProviderClients()
    clients.add_key("sim/k", "secret-k", sim.base_url)
    inputs = ["first text", "second text", "third"]
    try:
        answer = await clients.embed("sim/k", "text-embedding-3-small", inputs, 5)
        # The same request with the API's default encoding (decimal lists), sent plainly.
        async with httpx2.AsyncClient() as http:
            plain = await http.post(
                f"{sim.base_url}/embeddings",
                json={"model": "text-embedding-3-small", "input": inputs},
                headers={"Authorization": "Bearer secret-k"},
            )
    finally:
        await clients.aclose()

    assert isinstance(answer, EmbeddingResult)
    expected = [item["embedding"] for item in plain.json()["data"]]
    assert isinstance(expected[0], list) and len(expected[0]) == 64  # floats, not base64
    assert [vector.tolist() for vector in answer.vectors] == [
        np.asarray(vector, dtype=np.float32).tolist() for vector in expected
    ]


async def test_a_cut_off_embeddings_body_is_malformed_with_its_headers(simulator) -> None:
    sim = await simulator(keys=sim_keys([("k", 600, 100_000)]))
    sim.set_faults(fault_malformed=1.0)
    clients = ProviderClients()
    clients.add_key("sim/k", "secret-k", sim.base_url)
    try:
        outcome = await clients.embed("sim/k", "text-embedding-3-small", ["a"], 5)
    finally:
        await clients.aclose()

    assert isinstance(outcome, CallFailure) and outcome.kind is FailureKind.MALFORMED
    assert outcome.headers["x-ratelimit-limit-requests"] == "600"  # the budget still learns


@asynccontextmanager
async def chat_server(
    chat: Callable[[web.Request], Awaitable[web.Response]], tls: ssl.SSLContext | None = None
) -> AsyncIterator[int]:
    """A loopback server answering chat requests with `chat`; yields its port."""
    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0, ssl_context=tls).start()
    try:
        yield runner.addresses[0][1]
    finally:
        await runner.cleanup()


@pytest.fixture
async def odd_provider() -> AsyncIterator[tuple[str, list[tuple[int, str, bytes]]]]:
    """A provider that answers each chat request with the next (status, type, body) queued."""
    answers: list[tuple[int, str, bytes]] = []

    async def chat(_request: web.Request) -> web.Response:
        status, content_type, body = answers.pop(0)
        return web.Response(status=status, body=body, content_type=content_type)

    async with chat_server(chat) as port:
        yield f"http://127.0.0.1:{port}/v1", answers


def completion(content: object, usage: object = None) -> bytes:
    message = {"role": "assistant", "content": content}
    body = {"choices": [{"index": 0, "message": message, "finish_reason": "stop"}]}
    if usage is not None:
        body["usage"] = usage
    return json.dumps(body).encode()


async def test_what_a_2xx_body_holds_decides_answer_or_malformed(
    odd_provider: tuple[str, list[tuple[int, str, bytes]]],
) -> None:
    base_url, answers = odd_provider
    answers += [
        (200, "application/json", completion('{"results": []}', {"prompt_tokens": 7})),
        (200, "application/json", completion(None)),  # no content, no usage: still an answer
        (200, "application/json", b'{"choices": []}'),
        (200, "application/json", completion(42)),
        (200, "text/plain", b"Sure! Here you go"),
        (200, "application/json", completion("x")[:-5]),  # cut off
    ]
    clients = ProviderClients()
    clients.add_key("odd/k", "secret-odd", base_url)
    try:
        outcomes = [
            await clients.chat("odd/k", "gpt-4o-mini", MESSAGES, timeout_s=5) for _ in range(6)
        ]
    finally:
        await clients.aclose()

    answered, empty, *malformed = outcomes
    assert isinstance(answered, CallResult)
    assert (answered.content, answered.prompt_tokens, answered.completion_tokens) == (
        '{"results": []}',
        7,
        0,
    )
    assert isinstance(empty, CallResult) and empty.content is None
    for outcome in malformed:
        assert isinstance(outcome, CallFailure) and outcome.kind is FailureKind.MALFORMED
        assert outcome.message.startswith("response body is not a chat completion")


async def test_an_error_body_that_is_not_json_is_told_by_its_status(
    odd_provider: tuple[str, list[tuple[int, str, bytes]]],
) -> None:
    base_url, answers = odd_provider
    answers += [
        (503, "text/html", b"<html>upstream overloaded</html>"),
        (429, "text/plain", b"slow down"),
        (404, "text/plain", b""),
    ]
    clients = ProviderClients()
    clients.add_key("odd/k", "secret-odd", base_url)
    try:
        server, limited, missing = [
            await clients.chat("odd/k", "gpt-4o-mini", MESSAGES, timeout_s=5) for _ in range(3)
        ]
    finally:
        await clients.aclose()

    # As the SDK's exceptions read them: no error.message, so "Error code: N".
    assert isinstance(server, CallFailure) and server.kind is FailureKind.SERVER
    assert server.message == "HTTP 503: Error code: 503"
    assert isinstance(limited, CallFailure) and limited.kind is FailureKind.RATE_LIMITED
    assert limited.rate_kind == "requests"
    assert isinstance(missing, CallFailure) and missing.kind is FailureKind.BAD_REQUEST


async def test_calls_go_through_the_proxy_the_environment_names(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A forward proxy on loopback that answers for the provider it is asked for;
    # the provider's own name does not resolve, so only the proxy can answer.
    asked: list[str] = []

    async def chat(request: web.Request) -> web.Response:
        asked.append(request.headers["Host"])
        return web.Response(body=completion("[]"), content_type="application/json")

    for name in ("http_proxy", "https_proxy", "all_proxy", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)
    async with chat_server(chat) as port:
        monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{port}")
        monkeypatch.setenv("NO_PROXY", "direct.invalid")
        clients = ProviderClients()
        clients.add_key("via/k", "secret-k", "http://provider.invalid/v1")
        clients.add_key("direct/k", "secret-k", "http://direct.invalid/v1")
        try:
            proxied = await clients.chat("via/k", "gpt-4o-mini", MESSAGES, timeout_s=5)
            direct = await clients.chat("direct/k", "gpt-4o-mini", MESSAGES, timeout_s=5)
        finally:
            await clients.aclose()

    assert isinstance(proxied, CallResult) and asked == ["provider.invalid"]
    # NO_PROXY's host is called directly: its name resolves nowhere.
    assert isinstance(direct, CallFailure) and direct.kind is FailureKind.CONNECTION


async def test_a_provider_over_tls_is_trusted_as_the_environment_says(
    certificate: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    async def chat(_request: web.Request) -> web.Response:
        return web.Response(body=completion("[]"), content_type="application/json")

    outcomes: list[CallResult | CallFailure] = []
    async with chat_server(chat, tls_server(certificate)) as port:
        base = f"https://localhost:{port}/v1"
        for trusted in (False, True):
            monkeypatch.delenv("SSL_CERT_DIR", raising=False)
            if trusted:  # the certificate's authority, as an operator behind one names it
                monkeypatch.setenv("SSL_CERT_FILE", str(certificate[0]))
            else:
                monkeypatch.delenv("SSL_CERT_FILE", raising=False)
            clients = ProviderClients()
            clients.add_key("tls/k", "secret-k", base)
            try:
                outcomes.append(await clients.chat("tls/k", "gpt-4o-mini", MESSAGES, timeout_s=5))
            finally:
                await clients.aclose()

    untrusted, trusted_answer = outcomes
    # A self-signed certificate nobody vouches for is refused, not believed.
    assert isinstance(untrusted, CallFailure) and untrusted.kind is FailureKind.CONNECTION
    assert isinstance(trusted_answer, CallResult)


async def test_on_wire_is_called_once_as_the_request_goes_out_and_never_if_it_cannot(
    odd_provider: tuple[str, list[tuple[int, str, bytes]]],
) -> None:
    base_url, answers = odd_provider
    answers.append((200, "application/json", completion("[]")))
    wired: list[str] = []
    clients = ProviderClients()
    clients.add_key("odd/k", "secret-k", base_url)
    clients.add_key("gone/k", "secret-k", "http://127.0.0.1:9/v1")  # the discard port: refused
    try:
        sent = await clients.chat(
            "odd/k", "gpt-4o-mini", MESSAGES, timeout_s=5, on_wire=lambda: wired.append("odd")
        )
        refused = await clients.chat(
            "gone/k", "gpt-4o-mini", MESSAGES, timeout_s=5, on_wire=lambda: wired.append("gone")
        )
    finally:
        await clients.aclose()

    assert isinstance(sent, CallResult)
    assert isinstance(refused, CallFailure) and refused.kind is FailureKind.CONNECTION
    assert wired == ["odd"]


async def test_a_redirect_is_reported_not_followed() -> None:
    asked: list[str] = []

    async def chat(request: web.Request) -> web.Response:
        asked.append(request.path)
        # To itself: followed, the call would come back here again and again.
        raise web.HTTPTemporaryRedirect(location="/v1/chat/completions")

    async with chat_server(chat) as port:
        clients = ProviderClients()
        clients.add_key("moved/k", "secret-k", f"http://127.0.0.1:{port}/v1")
        try:
            outcome = await clients.chat("moved/k", "gpt-4o-mini", MESSAGES, timeout_s=5)
        finally:
            await clients.aclose()

    assert isinstance(outcome, CallFailure) and outcome.kind is FailureKind.BAD_REQUEST
    assert "HTTP 307" in outcome.message and asked == ["/v1/chat/completions"]
