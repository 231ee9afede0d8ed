"""What redacting a provider's answer costs: its content and its headers, per answer.

    python -m tests.benchmarks.redaction_cost

Every answer's content and headers pass through the job's `Redactor`
(`engine/redaction.py`) before the engine sees them.  This times that step
on a realistic answer (a batch of five chunk results, ~2.9 kB of JSON) and
the headers OpenAI sends with it, for jobs with 1 and 10 keys, and on an
answer whose words often share four characters with the keys (the slow
path: each such place is looked at closely), on the CPU
clock of this process (the best of several repeats, so other load on the
machine counts as little as it can).  Nothing is asserted: it prints
microseconds per answer, to set against the ~1–2 ms the SDK itself spends
on each request.
"""

from __future__ import annotations

import json
import random
import secrets
import time
import timeit
from collections.abc import Callable
from functools import partial

from engine.provider.redaction import Redactor

# Words of an ordinary answer; the second list shares a 4-character block
# ("proj") with every "sk-proj-…" key, the slower case for the redactor.
_ORDINARY = ("the", "a", "customer", "asked", "refund", "order", "delivery", "late", "agent")
_PROJECTS = ("the", "a", "customer", "project", "refund", "proj-42", "order", "projects")

HEADERS = {
    "Date": "Tue, 07 Oct 2025 10:00:00 GMT",
    "Content-Type": "application/json",
    "openai-organization": "org-AbCdEfGhIjKlMnOpQrStUvWx",
    "openai-processing-ms": "412",
    "openai-version": "2020-10-01",
    "x-ratelimit-limit-requests": "10000",
    "x-ratelimit-limit-tokens": "30000000",
    "x-ratelimit-remaining-requests": "9999",
    "x-ratelimit-remaining-tokens": "29999000",
    "x-ratelimit-reset-requests": "6ms",
    "x-ratelimit-reset-tokens": "2ms",
    "x-request-id": "req_7c2f4a9b8e1d3f5a7c9b2d4e6f8a0b1c",
    "strict-transport-security": "max-age=31536000; includeSubDomains; preload",
    "cf-cache-status": "DYNAMIC",
    "Server": "cloudflare",
    "CF-RAY": "8cf0a1b2c3d4e5f6-AMS",
    "alt-svc": 'h3=":443"; ma=86400',
}


def answer_content(rng: random.Random, words: tuple[str, ...]) -> str:
    results = [
        {
            "id": f"{rng.getrandbits(64):016x}",
            "summary": " ".join(rng.choice(words) for _ in range(80)),
            "items": ["refund", "late delivery"],
        }
        for _ in range(5)
    ]
    return json.dumps({"results": results})


def cpu_microseconds(call: Callable[[], object], number: int = 2000) -> float:
    best = min(timeit.repeat(call, number=number, repeat=7, timer=time.process_time))
    return best / number * 1e6


def main() -> None:
    for keys in (1, 10):
        redactor = Redactor("sk-proj-" + secrets.token_urlsafe(48) for _ in range(keys))
        on_headers = cpu_microseconds(partial(redactor.redact_headers, HEADERS))
        for label, words in (("ordinary", _ORDINARY), ("'proj' in 1 word of 4", _PROJECTS)):
            content = answer_content(random.Random(1), words)
            on_content = cpu_microseconds(partial(redactor.redact_content, content))
            print(
                f"{keys:2d} key(s), {label:>21} content ({len(content)} chars) "
                f"{on_content:5.1f} µs + headers ({len(HEADERS)}) {on_headers:4.1f} µs "
                f"= {on_content + on_headers:5.1f} µs per answer"
            )


if __name__ == "__main__":
    main()
