"""The units of work that flow through the pipeline."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Document:
    """One input record or file, before chunking.

    `source` names where it came from (a path, or path#record-id) and is
    part of every chunk id, so the same text in two sources is two chunks
    (each with its own result; one request answers both, see `text_key`).
    """

    source: str
    text: str


@dataclass(frozen=True, slots=True)
class Chunk:
    """A piece of a document small enough for one slot of a batch."""

    id: str
    source: str
    seq: int
    text: str
    est_tokens: int


def chunk_id(source: str, text: str) -> str:
    """A stable id from the source and the text: same input, same id, every run."""
    digest = hashlib.blake2b(digest_size=8)
    digest.update(source.encode("utf-8"))
    digest.update(b"\x00")
    digest.update(text.encode("utf-8"))
    return digest.hexdigest()


def sent_text(text: str) -> str:
    """A chunk's text as a request carries it: newlines inside a chunk would look
    like new entries to a model, so every run of whitespace is folded to one space."""
    return " ".join(text.split())


def text_key(text: str) -> str:
    """A stable key of the text a request carries, whatever source it came from.

    Two chunks with the same key are sent as the same words, so under one
    prompt version and model one answer serves both (`engine.pipeline.same_text`).
    """
    digest = hashlib.blake2b(sent_text(text).encode("utf-8"), digest_size=16)
    return digest.hexdigest()
