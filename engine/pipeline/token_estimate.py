"""Token counts estimated from UTF-8 size, without a tokenizer.

tiktoken downloads its vocabulary at run time, which fails offline.
`ceil(utf8_bytes / 3)` under-estimates on far fewer documents than the usual
`len / 4`; the dispatcher reconciles the estimate with the provider's `usage`.
"""

from __future__ import annotations

BYTES_PER_TOKEN = 3
"""UTF-8 bytes counted as one token; a text of `n * BYTES_PER_TOKEN` bytes estimates as `n`."""


def utf8_size(text: str) -> int:
    """The text's size in UTF-8 bytes, without encoding it when it is pure ASCII."""
    return len(text) if text.isascii() else len(text.encode("utf-8"))


def estimate_tokens(text: str) -> int:
    """An upper-leaning estimate of the tokens `text` costs: ceil(utf8 bytes / 3)."""
    return -(-utf8_size(text) // BYTES_PER_TOKEN)
