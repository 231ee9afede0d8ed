"""Keeping API keys out of what providers say: one redaction step at the boundary.

A provider can echo the key it was sent — OpenAI's own 401 says "Incorrect
API key provided: sk-…" — in an error body, a response header, or (if it is
hostile) in an answer.  From there text flows into the store, events, status
lines, exports and the control socket.  A `Redactor` is made from a job's
secrets and every text from a provider passes through it once, where it
enters the engine (`engine.provider.client`), so everything downstream is
clean by construction.

- Every configured secret, and every fragment of one at least
  `MIN_FRAGMENT` characters long, becomes that secret's masked hint.
- Error messages, headers and log lines also lose anything shaped like a
  bearer key (`sk-…`, `Bearer …`, long random tokens): a provider may echo
  a key that is not ours, or one we would not recognise.
- Answer content gets only the first treatment, so ordinary text is never
  mangled by a guess.

Finding fragments is a lookup per aligned 4-character block of the text,
done in C by a dict view intersection, so text with no fragment (nearly all
of it) costs about ten microseconds per kilobyte; only the blocks found are
then looked at closely (`python -m tests.benchmarks.redaction_cost`).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping

# A run of this many characters of a secret counts as leaking it: a provider
# that echoes the first 20 characters of a key has leaked most of it.
MIN_FRAGMENT = 8
# Every run of 2 * _BLOCK - 1 (<= MIN_FRAGMENT) characters holds a whole block
# starting at a multiple of _BLOCK: looking up only those blocks finds every
# fragment of MIN_FRAGMENT characters.
_BLOCK = 4
# A fragment of MIN_FRAGMENT characters reaches at least this far past one
# of its blocks' ends, on one side or the other.
_REACH = (MIN_FRAGMENT - _BLOCK + 1) // 2

_KEY_CHARS = r"A-Za-z0-9_\-"
# Shapes of keys, for error texts, headers and logs (never for answer content).
_KEY_SHAPED = re.compile(
    # an Authorization header's value, echoed: "Bearer <token>" (RFC 6750's token)
    r"(?P<scheme>\b(?i:bearer|basic))(?P<gap>\s+)(?P<credential>[A-Za-z0-9\-._~+/]{12,}=*)"
    # "api_key=…", "access_token: …"
    r"|(?P<name>(?i:api[-_]?key|access[-_]?token))(?P<sep>[\"']?\s*[=:]\s*[\"']?)"
    rf"(?P<value>[{_KEY_CHARS}./+=]{{12,}})"
    # the prefixes providers give their keys: sk-, sk-proj-, gsk_, xai-, hf_, AIza…
    rf"|(?<![{_KEY_CHARS}])(?P<prefixed>(?:sk|rk|pk|gsk|xai|hf|fw)[-_][{_KEY_CHARS}]{{12,}}"
    rf"|AIza[{_KEY_CHARS}]{{20,}})(?![{_KEY_CHARS}])"
    # long tokens, masked only when random-looking (see `_looks_random`)
    rf"|(?<![{_KEY_CHARS}])(?P<long>[{_KEY_CHARS}]{{32,}})"
)
# No key shape above fits in fewer characters: shorter header values are let be.
_SHORTEST_KEY_SHAPE = 15
_DIGIT = re.compile(r"[0-9]")
_LOWER = re.compile(r"[a-z]")
_UPPER = re.compile(r"[A-Z]")


def mask_secret(secret: str) -> str:
    """What may be shown of a key: a hint of its kind and its last four characters."""
    if len(secret) <= 8:
        return "…" * 3
    prefix = secret[:3] if secret.startswith("sk-") else ""
    return f"{prefix}…{secret[-4:]}"


def _looks_random(token: str) -> bool:
    # Keys mix digits, lower and upper case; request ids, hashes and
    # snake_case words do not, and are worth keeping in an error message.
    return bool(_DIGIT.search(token) and _LOWER.search(token) and _UPPER.search(token))


def _mask_key_shaped(match: re.Match[str]) -> str:
    if match["credential"] is not None:
        return f"{match['scheme']}{match['gap']}{mask_secret(match['credential'])}"
    if match["value"] is not None:
        return f"{match['name']}{match['sep']}{mask_secret(match['value'])}"
    if match["long"] is not None and not _looks_random(match["long"]):
        return match[0]
    return mask_secret(match[0])


class Redactor:
    """Replaces a job's secrets, and fragments of them, by their masked hints.

    Secrets shorter than `MIN_FRAGMENT` characters (placeholders such as
    "ollama" for a local server) are masked only where they stand as a whole
    word in error texts and headers: in answer content they would mangle
    ordinary words.
    """

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._secrets: list[str] = []
        self._hints: list[str] = []
        # every _BLOCK-character piece of every secret → (secret number, offset)
        self._pieces: dict[tuple[str, ...], list[tuple[int, int]]] = {}
        # every (_BLOCK + _REACH)-character piece: tells a fragment from a
        # block that text merely shares with a key ("proj" in "project")
        self._wider: set[str] = set()
        self._short: list[tuple[str, re.Pattern[str], str]] = []
        for secret in secrets:
            self.add(secret)

    def add(self, secret: str) -> None:
        """Know one more secret."""
        if not secret or secret in self._secrets:
            return
        hint = mask_secret(secret)
        if len(secret) < MIN_FRAGMENT:
            word = rf"(?<![{_KEY_CHARS}]){re.escape(secret)}(?![{_KEY_CHARS}])"
            self._short.append((secret, re.compile(word), hint))
            return
        number = len(self._secrets)
        self._secrets.append(secret)
        self._hints.append(hint)
        for offset in range(len(secret) - _BLOCK + 1):
            piece = tuple(secret[offset : offset + _BLOCK])
            self._pieces.setdefault(piece, []).append((number, offset))
        for offset in range(len(secret) - _BLOCK - _REACH + 1):
            self._wider.add(secret[offset : offset + _BLOCK + _REACH])

    def redact_content(self, text: str) -> str:
        """An answer's text with the configured secrets and their fragments masked."""
        if not self._pieces:
            return text
        blocks = iter(text)
        # zip(it, it, it, it) yields the aligned 4-character blocks; the
        # intersection looks each up in C without building a set of them.
        found = self._pieces.keys() & zip(blocks, blocks, blocks, blocks, strict=False)
        if not found:
            return text
        return self._mask_fragments(text, found)

    def redact_message(self, text: str) -> str:
        """An error text or a log line: secrets, fragments and key-shaped tokens masked."""
        text = self.redact_content(text)
        for _, word, hint in self._short:
            text = word.sub(hint, text)
        return _KEY_SHAPED.sub(_mask_key_shaped, text)

    def redact_headers(self, headers: Mapping[str, str]) -> dict[str, str]:
        """Response headers, names lower-cased, with names and values redacted.

        This runs on every answer, so the common case is kept cheap: one
        fragment check over all of them, then the key shapes only in values
        long enough to hold one.
        """
        lowered = {name.lower(): value for name, value in headers.items()}
        joined = "\n".join(f"{name}\n{value}" for name, value in lowered.items())
        if self.redact_content(joined) != joined or any(
            secret in joined for secret, _, _ in self._short
        ):
            return {
                self.redact_message(name): self.redact_message(value)
                for name, value in lowered.items()
            }
        for name, value in lowered.items():
            if len(value) >= _SHORTEST_KEY_SHAPE:
                lowered[name] = _KEY_SHAPED.sub(_mask_key_shaped, value)
        return lowered

    def _mask_fragments(self, text: str, found: Iterable[tuple[str, ...]]) -> str:
        """Mask every fragment holding one of the `found` blocks.

        Any fragment long enough holds an aligned block, and so is found by
        growing outwards from each aligned place such a block occurs.
        """
        spans: list[tuple[int, int, int]] = []  # (start, end, secret number)
        wider = self._wider
        for piece in found:
            places = self._pieces[piece]
            block = "".join(piece)
            start = text.find(block)
            while start >= 0:
                # Aligned blocks are enough (see _BLOCK), and only one that
                # reaches on into more of a key is worth growing.
                if start % _BLOCK == 0 and (
                    text[start : start + _BLOCK + _REACH] in wider
                    or text[max(0, start - _REACH) : start + _BLOCK] in wider
                ):
                    fragment = self._longest_fragment(text, start, places)
                    if fragment is not None:
                        spans.append(fragment)
                start = text.find(block, start + 1)
        if not spans:
            return text
        spans.sort()
        parts: list[str] = []
        done = 0
        for start, end, number in spans:
            if end <= done:
                continue  # inside what is masked already
            if start >= done:
                parts.append(text[done:start])
                parts.append(self._hints[number])
            # else it continues the fragment before, whose hint stands for both
            done = end
        parts.append(text[done:])
        return "".join(parts)

    def _longest_fragment(
        self, text: str, start: int, places: list[tuple[int, int]]
    ) -> tuple[int, int, int] | None:
        """The longest fragment of a secret around the block at `start`, if long enough."""
        best: tuple[int, int, int] | None = None
        for number, offset in places:
            secret = self._secrets[number]
            left, s_left = start, offset
            while left > 0 and s_left > 0 and text[left - 1] == secret[s_left - 1]:
                left -= 1
                s_left -= 1
            right, s_right = start + _BLOCK, offset + _BLOCK
            while right < len(text) and s_right < len(secret) and text[right] == secret[s_right]:
                right += 1
                s_right += 1
            longest = best[1] - best[0] if best is not None else MIN_FRAGMENT - 1
            if right - left > longest:
                best = (left, right, number)
        return best


# Loggers of the SDK and its transport, which may log provider text (a
# request id header, a status line's reason) once an application turns
# their logging on (OPENAI_LOG=debug, or a DEBUG root logger).
_PROVIDER_LOGGERS = ("openai", "httpx2", "httpcore2", "aiohttp")
# The ones known to log response data, named so they get the filter even if
# their module is imported later.
_KNOWN_LOGGERS = (
    "openai._base_client",
    "httpx2",
    "httpcore2.http11",
    "httpcore2.http2",
    "httpcore2.connection",
)


class RedactingLogFilter(logging.Filter):
    """Runs every record of the SDK's and transport's loggers through a `Redactor`.

    A logger's filters see only the records made by that very logger, not
    its children's, so it is installed on each logger of those packages that
    exists (they are made at import, before any request) or is known to log
    response data.
    """

    def __init__(self, redactor: Redactor) -> None:
        super().__init__()
        self._redactor = redactor
        self._loggers: list[logging.Logger] = []

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a malformed record: logging reports it, never the request
            return True
        clean = self._redactor.redact_message(message)
        if clean != message:
            record.msg, record.args = clean, None
        return True

    def install(self) -> None:
        """Add the filter to the provider loggers that exist now."""
        names = [
            name
            for name in list(logging.root.manager.loggerDict)
            if name.split(".", 1)[0] in _PROVIDER_LOGGERS
        ]
        for name in sorted({*_PROVIDER_LOGGERS, *_KNOWN_LOGGERS, *names}):
            logger = logging.getLogger(name)
            logger.addFilter(self)
            self._loggers.append(logger)

    def uninstall(self) -> None:
        """Take the filter off every logger it was added to."""
        for logger in self._loggers:
            logger.removeFilter(self)
        self._loggers.clear()
