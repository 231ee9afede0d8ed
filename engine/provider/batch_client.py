"""One key's Files and Batch APIs, through the `openai` SDK.

The batch route calls these a few times a minute, not thousands of times a
second, so the SDK's own requests and models are worth their cost here: the
upload's multipart body, the batch's fields and the file's bytes are the
SDK's, exactly as a provider expects them.  The SDK client shares the
engine's one connection pool and never retries on its own; it is never
closed (closing it would close the shared pool — `ProviderClients.aclose`
closes that once).  `openai` is imported on first use: it costs half a
second, and only batch jobs need it.

Every failure is a `BatchCallError` holding what the engine needs to
classify it as it classifies an online call's (`client.classify_status`):
the status, headers and body of an error response, or no status for a
timeout or a broken connection.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import httpx2

from engine.provider.redaction import Redactor

if TYPE_CHECKING:
    import openai

CHAT_ENDPOINT = "/v1/chat/completions"
TERMINAL_STATES = frozenset({"completed", "failed", "expired", "cancelled"})
_TIMEOUT_S = 120.0  # an upload of a large file, on a slow link


class BatchCallError(Exception):
    """A Files or Batch API call that failed: its status, headers and body, if it got one."""

    def __init__(
        self,
        message: str,
        status: int | None = None,
        headers: Mapping[str, str] | None = None,
        body: object = None,
        *,
        timed_out: bool = False,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.headers = dict(headers or {})
        self.body = body
        self.timed_out = timed_out


@dataclass(frozen=True, slots=True)
class BatchStatus:
    """What the provider says of one batch (the fields of the SDK's `Batch` the engine reads)."""

    batch_id: str
    state: str  # validating, in_progress, finalizing, completed, failed, expired, cancelling, …
    total: int
    completed: int
    failed: int
    output_file_id: str | None
    error_file_id: str | None
    created_at: int  # Unix seconds
    expires_at: int | None
    errors: str  # the provider's reasons for a failed batch, in one line ("" when none)

    @property
    def ended(self) -> bool:
        return self.state in TERMINAL_STATES


class BatchClient:
    """The Files and Batch APIs of the key whose secret and base URL it holds."""

    def __init__(
        self, secret: str, base_url: str, http: httpx2.AsyncClient, redactor: Redactor
    ) -> None:
        self._secret = secret
        self._base_url = base_url
        self._http = http
        self._redactor = redactor
        self._sdk: openai.AsyncOpenAI | None = None

    def _client(self) -> openai.AsyncOpenAI:
        if self._sdk is None:
            sdk = importlib.import_module("openai")
            self._sdk = sdk.AsyncOpenAI(
                api_key=self._secret,
                base_url=self._base_url,
                max_retries=0,  # every retry is the engine's, counted and bounded
                http_client=self._http,
                timeout=_TIMEOUT_S,
            )
        return self._sdk

    async def upload(self, content: bytes, filename: str) -> str:
        """Upload a batch input file (JSONL); its file id."""
        uploaded = await self._call(
            self._client().files.create(file=(filename, content), purpose="batch")
        )
        return str(uploaded.id)

    async def submit(
        self, input_file_id: str, window: str, metadata: Mapping[str, str]
    ) -> BatchStatus:
        """Create a batch of the chat completion requests in `input_file_id`."""
        created = await self._call(
            self._client().batches.create(
                input_file_id=input_file_id,
                endpoint="/v1/chat/completions",
                completion_window=window,  # type: ignore[arg-type]
                metadata=dict(metadata),
            )
        )
        return _status(created)

    async def status(self, batch_id: str) -> BatchStatus:
        """The batch as the provider sees it now."""
        return _status(await self._call(self._client().batches.retrieve(batch_id)))

    async def cancel(self, batch_id: str) -> BatchStatus:
        """Ask the provider to stop the batch (it goes through cancelling)."""
        return _status(await self._call(self._client().batches.cancel(batch_id)))

    async def find(self, input_file_id: str) -> BatchStatus | None:
        """The batch made of `input_file_id`, if one was created (the newest 100 looked at)."""
        page = await self._call(self._client().batches.list(limit=100))
        for batch in page.data:
            if batch.input_file_id == input_file_id:
                return _status(batch)
        return None

    async def content(self, file_id: str) -> bytes:
        """A file's bytes (a batch's output or error file)."""
        response = await self._call(self._client().files.content(file_id))
        return bytes(response.content)

    async def _call(self, call: Any) -> Any:
        sdk = importlib.import_module("openai")
        try:
            return await call
        except sdk.APIStatusError as exc:
            response = exc.response
            try:
                body: object = response.json()
            except ValueError:
                body = response.text
            raise BatchCallError(
                self._redactor.redact_message(str(exc))[:300],
                response.status_code,
                response.headers,
                body,
            ) from None
        except sdk.APITimeoutError:
            raise BatchCallError("timed out", timed_out=True) from None
        except sdk.APIConnectionError as exc:
            cause = type(exc.__cause__ or exc).__name__
            raise BatchCallError(f"connection failed ({cause})") from None


def _status(batch: Any) -> BatchStatus:
    counts = batch.request_counts
    errors = ""
    if batch.errors is not None and batch.errors.data:
        errors = "; ".join(
            f"{e.code or 'error'}: {e.message or ''}"
            + (f" (line {e.line})" if e.line is not None else "")
            for e in batch.errors.data[:3]
        )
    return BatchStatus(
        batch_id=batch.id,
        state=batch.status,
        total=counts.total if counts is not None else 0,
        completed=counts.completed if counts is not None else 0,
        failed=counts.failed if counts is not None else 0,
        output_file_id=batch.output_file_id,
        error_file_id=batch.error_file_id,
        created_at=batch.created_at,
        expires_at=batch.expires_at,
        errors=errors,
    )
