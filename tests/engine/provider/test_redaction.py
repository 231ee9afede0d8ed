"""The redaction step: what a provider says loses every key and every fragment of one."""

from __future__ import annotations

import logging
import secrets

import pytest

from engine.provider.redaction import MIN_FRAGMENT, RedactingLogFilter, Redactor, mask_secret

KEY = "sk-proj-" + "Zq3vR8kLm2Xw9TbN4pYs7HcJ1dFg6UaE5oKi0BtW"  # 48 characters
HINT = mask_secret(KEY)
OTHER = "gsk_" + "Lr5Tn8Wq2Zx7Vb4Mc1Kd9Jf6Hg3Sa0Pe"


def fragments(secret: str, shortest: int = MIN_FRAGMENT) -> list[str]:
    return [secret[i:j] for i in range(len(secret)) for j in range(i + shortest, len(secret) + 1)]


def test_the_hint_is_the_kind_and_the_last_four_characters() -> None:
    assert HINT == "sk-…0BtW"
    assert mask_secret("abcdefgh") == "………"  # too short to show any of it


def test_a_whole_key_in_an_error_message_becomes_its_hint() -> None:
    redactor = Redactor([KEY])

    said = redactor.redact_message(f"Incorrect API key provided: {KEY}. You can find your key")

    assert said == f"Incorrect API key provided: {HINT}. You can find your key"


@pytest.mark.parametrize("shift", range(4))  # every alignment to the redactor's 4-char blocks
@pytest.mark.parametrize("tail", ["", " was sent"])
def test_every_fragment_of_eight_characters_or_more_is_masked_wherever_it_stands(
    shift: int, tail: str
) -> None:
    redactor = Redactor([KEY])
    for fragment in fragments(KEY):
        text = f"{'.' * shift}{fragment}{tail}"

        for clean in (redactor.redact_message(text), redactor.redact_content(text)):
            assert fragment not in clean, (fragment, clean)
            assert clean == f"{'.' * shift}{HINT}{tail}"


def test_a_fragment_shorter_than_eight_characters_is_ordinary_text() -> None:
    redactor = Redactor([KEY])
    text = f"the order {KEY[10:17]} shipped"

    assert redactor.redact_content(text) == text


def test_keys_next_to_each_other_and_repeated_are_all_masked() -> None:
    redactor = Redactor([KEY, OTHER])
    text = f"{KEY}{KEY} then {OTHER[:12]}|{KEY[5:30]} and {KEY}"

    clean = redactor.redact_content(text)

    for fragment in fragments(KEY) + fragments(OTHER):
        assert fragment not in clean
    assert clean.count(HINT) >= 3
    assert mask_secret(OTHER) in clean


def test_answer_content_without_a_key_is_returned_untouched() -> None:
    # (Even "sk-proj-" alone would go: it is eight characters of the key.)
    redactor = Redactor([KEY])
    # Ordinary text with look-alikes: words of the key's prefix, hex ids,
    # long snake_case words, a "Bearer" in prose.
    text = (
        '{"results": [{"id": "9f86d081884c7d65", "summary": "the project team '
        "asked a Bearer of good news about task-management-system-overview and "
        'sk-proj style keys; request req_7c2f4a9b8e1d3f5a7c9b2d4e6f8a0b1c"}]}'
    )

    assert redactor.redact_content(text) == text


def test_content_keeps_key_shaped_text_that_is_not_a_configured_key() -> None:
    # Guessing is for error texts: an answer may legitimately quote an example key.
    redactor = Redactor([KEY])
    text = f"an example key looks like {OTHER}"

    assert redactor.redact_content(text) == text
    assert OTHER not in redactor.redact_message(text)


@pytest.mark.parametrize(
    ("said", "gone"),
    [
        ("Authorization: Bearer abcdefghijklmnopqrstuvwx", "abcdefghijklmnopqrstuvwx"),
        ("bearer  eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJl", "eyJhbGciOiJIUzI1NiJ9"),
        ("Incorrect API key provided: sk-abcdefghij1234567890", "sk-abcdefghij1234567890"),
        ("key sk-proj-AbCdEfGhIjKlMnOp_qrstu-vw is revoked", "sk-proj-AbCdEfGhIjKlMnOp"),
        (f"groq said {OTHER}", OTHER),
        ("google: key=AIzaSyA1b2C3d4E5f6G7h8I9j0KlMnOpQrStUv", "AIzaSyA1b2C3d4E5f6G7h8I9j0"),
        ("api_key=abcdefghijklmnop&model=x", "abcdefghijklmnop"),
        ('{"access_token": "abcdefghijklmnopqrst"}', "abcdefghijklmnopqrst"),
        ("token Xk9mP2qR7sT4vW8yZ1aB3cD5eF6gH0jK is bad", "Xk9mP2qR7sT4vW8yZ1aB3cD5eF6gH0jK"),
    ],
)
def test_error_texts_lose_anything_shaped_like_a_key(said: str, gone: str) -> None:
    clean = Redactor().redact_message(said)

    assert gone not in clean
    assert "…" in clean


@pytest.mark.parametrize(
    "said",
    [
        "You didn't provide an API key. You need to provide your API key in an Authorization "
        "header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
        "Please include the request ID req_7c2f4a9b8e1d3f5a7c9b2d4e6f8a0b1c in your message.",
        "Rate limit reached for gpt-4o-mini in organization org-AbCdEfGhIjKlMnOpQrStUvWx on "
        "requests per min (RPM): Limit 3, Used 3, Requested 1. Please try again in 20s.",
        "This model's maximum context length is 128000 tokens; parameter max_completion_tokens",
        "trace 3f2a9c1e-7b4d-4e8f-a6b2-9d0c5e1f3a7b / sha256 "
        "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
    ],
)
def test_ordinary_error_texts_are_left_as_they_are(said: str) -> None:
    assert Redactor([KEY]).redact_message(said) == said


def test_a_short_placeholder_key_is_masked_in_errors_as_a_word_but_never_in_answers() -> None:
    redactor = Redactor(["ollama"])

    assert redactor.redact_message("Incorrect API key: ollama.") == "Incorrect API key: ………."
    assert redactor.redact_message("ollama-server is down") == "ollama-server is down"
    assert redactor.redact_content("ollama runs models") == "ollama runs models"


def test_headers_lose_keys_in_values_and_names_and_keep_the_rest() -> None:
    redactor = Redactor([KEY])
    headers = {
        "X-Request-Id": KEY,
        "WWW-Authenticate": f"Bearer {KEY}",
        f"x-echo-{KEY[:20]}": "1",
        "x-other": f"Bearer {OTHER}",
        "Retry-After-Ms": "20",
        "x-ratelimit-remaining-tokens": "99999000",
    }

    clean = redactor.redact_headers(headers)

    flat = repr(clean)
    for fragment in fragments(KEY) + fragments(OTHER):
        assert fragment not in flat
    assert clean["x-request-id"] == HINT
    assert clean["www-authenticate"] == f"Bearer {HINT}"
    assert clean["retry-after-ms"] == "20"
    assert clean["x-ratelimit-remaining-tokens"] == "99999000"


def test_ordinary_headers_come_back_lower_cased_and_unchanged() -> None:
    headers = {
        "Date": "Tue, 07 Oct 2025 10:00:00 GMT",
        "Content-Type": "application/json",
        "x-request-id": "req_7c2f4a9b8e1d3f5a7c9b2d4e6f8a0b1c",
        "Strict-Transport-Security": "max-age=31536000; includeSubDomains; preload",
        "x-ratelimit-reset-requests": "6m0s",
    }

    clean = Redactor([KEY]).redact_headers(headers)

    assert clean == {name.lower(): value for name, value in headers.items()}


def test_random_keys_are_found_in_random_text_at_every_offset() -> None:
    # Property-style: many random keys, each echoed in part at a random place.
    rng = secrets.SystemRandom()
    for _ in range(200):
        key = "sk-" + secrets.token_urlsafe(rng.randint(8, 48))
        redactor = Redactor([key])
        start = rng.randrange(0, len(key) - MIN_FRAGMENT + 1)
        end = rng.randrange(start + MIN_FRAGMENT, len(key) + 1)
        noise = secrets.token_hex(rng.randint(0, 40))
        text = f"{noise}{key[start:end]}{noise[::-1]}"

        assert key[start:end] not in redactor.redact_content(text), (key, start, end)


def test_the_sdk_and_transport_logs_are_redacted_while_the_filter_is_installed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    log_filter = RedactingLogFilter(Redactor([KEY]))
    caplog.set_level(logging.DEBUG)
    log_filter.install()
    try:
        logging.getLogger("openai._base_client").debug("request_id: %s", KEY)
        logging.getLogger("httpx2").info('HTTP Request: POST /v1 "HTTP/1.1 401 %s"', KEY[:20])
    finally:
        log_filter.uninstall()
    logging.getLogger("openai._base_client").debug("request_id: %s", KEY)

    first, second, after = (record.getMessage() for record in caplog.records)
    assert first == f"request_id: {HINT}"
    # Masked, by this filter or by one an earlier job in this process left on
    # the same logger (each masks the key-shaped piece with a hint of its own).
    assert second.startswith('HTTP Request: POST /v1 "HTTP/1.1 401 sk-…')
    assert KEY[:MIN_FRAGMENT] not in second
    assert after == f"request_id: {KEY}"  # uninstalled: the filter is gone
