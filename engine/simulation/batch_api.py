"""The simulator's Files and Batch APIs, shaped like OpenAI's.

`POST /v1/files` (multipart, `purpose=batch`), `GET /v1/files/{id}`,
`GET /v1/files/{id}/content`, `POST /v1/batches`, `GET /v1/batches/{id}`,
`POST /v1/batches/{id}/cancel` and `GET /v1/batches`, with the bodies the
`openai` SDK parses (`FileObject`, `Batch`).

A batch moves on the clock, not on a task: it is `validating` for the first
tenth of `batch_delay_s`, `in_progress` until the delay has passed, and the
first look after that answers every line at once — each with the same chat
composer the online endpoint uses (`ProviderSimulator.answer_chat`), so a
line's answer validates as an online one does — and completes it, with an
output file (and an error file when some lines failed).  Faults, drawn from
one seeded RNG when the batch is created: the whole batch fails validation,
expires (the first half of its lines answered, the rest in the error file
with `batch_expired`), or stays `in_progress` until cancelled ("stuck"); and
each line fails with probability `line_fault` (a 500 in the error file);
and a look at a batch answers 500 with probability `poll`.  A batch cancelled
while in progress answers the share of its lines its age says it had got
through (none for a stuck one), in an output file, as OpenAI's cancelled
batches give what they finished; the lines it never reached are in no file.
An input file over the provider's limits (requests or bytes) or with a line
the chat endpoint would refuse fails the batch, as OpenAI's validation does.
"""

from __future__ import annotations

import json
import random
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from aiohttp import BodyPartReader, web

MAX_REQUESTS_PER_BATCH = 50_000
MAX_BYTES_PER_FILE = 200 * 1024 * 1024
CHAT_ENDPOINT = "/v1/chat/completions"
_WINDOWS = {"24h": 24 * 3600}
_VALIDATING_SHARE = 0.1  # of the delay spent validating


class BatchLineError(ValueError):
    """A batch input line the chat endpoint would refuse (400), with the parameter at fault."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


class ChatComposer(Protocol):
    """The simulator's chat answers (`ProviderSimulator`)."""

    def check_chat_body(self, body: object) -> None: ...

    def answer_chat(self, body: dict[str, Any]) -> dict[str, Any]: ...


@dataclass(frozen=True, slots=True)
class BatchFaults:
    """How the simulated Batch API misbehaves: per-batch and per-line probabilities."""

    delay_s: float = 3.0
    line_fault: float = 0.0  # a line answers 500 into the error file
    fail: float = 0.0  # the batch fails validation
    expire: float = 0.0  # the batch expires, half answered
    stuck: float = 0.0  # the batch never leaves in_progress
    poll: float = 0.0  # a look at a batch (GET /v1/batches/{id}) answers 500

    def __post_init__(self) -> None:
        if self.delay_s < 0:
            raise ValueError(f"batch delay must not be negative, got {self.delay_s}")
        for name in ("line_fault", "fail", "expire", "stuck", "poll"):
            rate = getattr(self, name)
            if not 0.0 <= rate <= 1.0:
                raise ValueError(f"batch {name} must be a probability in [0, 1], got {rate}")


@dataclass(slots=True)
class BatchApiStats:
    """What the Batch API was asked to do and did."""

    files_uploaded: int = 0
    batches_created: int = 0
    batches_cancelled: int = 0
    batch_lines_answered: int = 0
    batch_lines_failed: int = 0
    polls_failed: int = 0


@dataclass(slots=True)
class _File:
    id: str
    filename: str
    purpose: str
    content: bytes
    created_at: int

    def described(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "file",
            "bytes": len(self.content),
            "created_at": self.created_at,
            "filename": self.filename,
            "purpose": self.purpose,
            "status": "processed",
            "expires_at": None,
            "status_details": None,
        }


@dataclass(slots=True)
class _Batch:
    id: str
    input_file_id: str
    endpoint: str
    completion_window: str
    created_at: int
    started: float  # monotonic
    owner: str  # the key that created it: others may not see it
    fate: str  # "complete", "fail", "expire" or "stuck"
    metadata: dict[str, str] | None
    status: str = "validating"
    reached: float = 0.0  # the share of lines answered when it was cancelled
    total: int = 0
    completed: int = 0
    failed: int = 0
    output_file_id: str | None = None
    error_file_id: str | None = None
    errors: list[dict[str, Any]] = field(default_factory=list)
    stamps: dict[str, int] = field(default_factory=dict)

    def described(self) -> dict[str, Any]:
        window = _WINDOWS.get(self.completion_window, 24 * 3600)
        return {
            "id": self.id,
            "object": "batch",
            "endpoint": self.endpoint,
            "errors": {"object": "list", "data": self.errors} if self.errors else None,
            "input_file_id": self.input_file_id,
            "completion_window": self.completion_window,
            "status": self.status,
            "output_file_id": self.output_file_id,
            "error_file_id": self.error_file_id,
            "created_at": self.created_at,
            "in_progress_at": self.stamps.get("in_progress"),
            "expires_at": self.created_at + window,
            "finalizing_at": self.stamps.get("finalizing"),
            "completed_at": self.stamps.get("completed"),
            "failed_at": self.stamps.get("failed"),
            "expired_at": self.stamps.get("expired"),
            "cancelling_at": self.stamps.get("cancelling"),
            "cancelled_at": self.stamps.get("cancelled"),
            "request_counts": {
                "total": self.total,
                "completed": self.completed,
                "failed": self.failed,
            },
            "metadata": self.metadata,
        }


_Json = Callable[[int, dict[str, Any]], web.Response]


class SimulatedBatchApi:
    """Files and batches kept in memory; `handle` serves one authenticated request."""

    def __init__(self, composer: ChatComposer, faults: BatchFaults, seed: int) -> None:
        self._composer = composer
        self.faults = faults
        self.stats = BatchApiStats()
        self._rng = random.Random(seed * 7919 + 17)
        self._files: dict[str, _File] = {}
        self._batches: dict[str, _Batch] = {}
        self.max_requests = MAX_REQUESTS_PER_BATCH
        self.max_bytes = MAX_BYTES_PER_FILE

    @staticmethod
    def serves(method: str, path: str) -> bool:
        """Whether `method path` is one of this API's endpoints."""
        return path.startswith(("/v1/files", "/v1/batches")) and method in ("GET", "POST")

    async def handle(
        self, request: web.BaseRequest, caller: str, json_response: _Json
    ) -> web.Response:
        """Serve `request` for the key `caller`; `json_response(status, body)` answers."""
        method, parts = request.method, request.path.rstrip("/").split("/")[2:]
        if parts[0] == "files":
            if method == "POST" and len(parts) == 1:
                return await self._upload(request, json_response)
            file = self._files.get(parts[1]) if len(parts) > 1 else None
            if method == "GET" and file is not None and len(parts) == 2:
                return json_response(200, file.described())
            if method == "GET" and file is not None and parts[2:] == ["content"]:
                return web.Response(
                    status=200, body=file.content, content_type="application/octet-stream"
                )
            if len(parts) > 1 and file is None:
                return json_response(404, _not_found(f"No such File object: {parts[1]}"))
        else:
            if method == "POST" and len(parts) == 1:
                return await self._create(request, caller, json_response)
            if method == "GET" and len(parts) == 1:
                listed = [b.described() for b in self._batches.values() if b.owner == caller]
                listed.reverse()  # newest first, as OpenAI lists them
                return json_response(
                    200,
                    {
                        "object": "list",
                        "data": listed,
                        "first_id": listed[0]["id"] if listed else None,
                        "last_id": listed[-1]["id"] if listed else None,
                        "has_more": False,
                    },
                )
            batch = self._batches.get(parts[1]) if len(parts) > 1 else None
            if batch is None or batch.owner != caller:
                return json_response(404, _not_found(f"No batch found with id '{parts[1]}'."))
            if method == "GET" and len(parts) == 2:
                if self.faults.poll > 0 and self._rng.random() < self.faults.poll:
                    self.stats.polls_failed += 1
                    return json_response(500, _server_error())
                self._advance(batch)
                return json_response(200, batch.described())
            if method == "POST" and parts[2:] == ["cancel"]:
                self._cancel(batch)
                return json_response(200, batch.described())
        return json_response(404, _not_found(f"Invalid URL ({method} {request.path})"))

    # --- files -------------------------------------------------------------------------------

    async def _upload(self, request: web.BaseRequest, json_response: _Json) -> web.Response:
        purpose, filename, content = "", "upload.jsonl", b""
        try:
            reader = await request.multipart()
            while (part := await reader.next()) is not None:
                if not isinstance(part, BodyPartReader):
                    continue
                if part.name == "purpose":
                    purpose = (await part.text()).strip()
                elif part.name == "file":
                    filename = part.filename or filename
                    content = bytes(await part.read(decode=False))
        except (ValueError, AssertionError, KeyError) as exc:
            return json_response(400, _invalid(f"Could not parse the multipart body: {exc}"))
        if not purpose:
            return json_response(400, _invalid("Missing required parameter: 'purpose'.", "purpose"))
        file = self._add_file(filename, purpose, content)
        self.stats.files_uploaded += 1
        return json_response(200, file.described())

    def _add_file(self, filename: str, purpose: str, content: bytes) -> _File:
        file = _File(f"file-{uuid.uuid4().hex[:24]}", filename, purpose, content, int(time.time()))
        self._files[file.id] = file
        return file

    # --- batches -----------------------------------------------------------------------------

    async def _create(
        self, request: web.BaseRequest, caller: str, json_response: _Json
    ) -> web.Response:
        try:
            body = json.loads(await request.read())
        except ValueError:
            return json_response(400, _invalid("We could not parse the JSON body of your request."))
        if not isinstance(body, dict):
            return json_response(400, _invalid("The request body must be a JSON object."))
        file_id = body.get("input_file_id")
        if body.get("endpoint") != CHAT_ENDPOINT:
            return json_response(
                400, _invalid("Only /v1/chat/completions is simulated.", "endpoint")
            )
        if body.get("completion_window") not in _WINDOWS:
            return json_response(
                400, _invalid("completion_window must be '24h'.", "completion_window")
            )
        if not isinstance(file_id, str) or file_id not in self._files:
            return json_response(
                400, _invalid(f"Invalid 'input_file_id': {file_id!r}.", "input_file_id")
            )
        faults = self.faults
        draw = self._rng.random()
        fate = "complete"
        for name, rate in (
            ("fail", faults.fail),
            ("expire", faults.expire),
            ("stuck", faults.stuck),
        ):
            if draw < rate:
                fate = name
                break
            draw -= rate
        metadata = body.get("metadata")
        batch = _Batch(
            id=f"batch_{uuid.uuid4().hex[:24]}",
            input_file_id=file_id,
            endpoint=CHAT_ENDPOINT,
            completion_window=str(body["completion_window"]),
            created_at=int(time.time()),
            started=time.monotonic(),
            owner=caller,
            fate=fate,
            metadata=metadata if isinstance(metadata, dict) else None,
        )
        lines, problems = self._input_lines(self._files[file_id].content)
        batch.total = len(lines)
        if problems:
            batch.fate = "invalid"
            batch.errors = problems
        self._batches[batch.id] = batch
        self.stats.batches_created += 1
        return json_response(200, batch.described())

    def _input_lines(self, content: bytes) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """The input file's requests, and what validation finds wrong with it."""
        problems: list[dict[str, Any]] = []
        if len(content) > self.max_bytes:
            problems.append(
                _line_error("file_too_large", f"The file exceeds {self.max_bytes} bytes.", None)
            )
            return [], problems
        lines: list[dict[str, Any]] = []
        seen: set[str] = set()
        for number, raw in enumerate(content.splitlines(), start=1):
            if not raw.strip():
                continue
            try:
                line = json.loads(raw)
                if not isinstance(line, dict):
                    raise ValueError("not an object")
            except ValueError:
                problems.append(_line_error("invalid_json_line", "This line is not JSON.", number))
                continue
            custom_id = line.get("custom_id")
            if not isinstance(custom_id, str) or custom_id in seen:
                problems.append(
                    _line_error("duplicate_custom_id", "custom_id must be unique.", number)
                )
                continue
            seen.add(custom_id)
            if line.get("method") != "POST" or line.get("url") != CHAT_ENDPOINT:
                problems.append(
                    _line_error("invalid_url", f"url must be {CHAT_ENDPOINT} (POST).", number)
                )
                continue
            try:
                self._composer.check_chat_body(line.get("body"))
            except ValueError as bad:
                problems.append(_line_error("invalid_request", str(bad), number))
                continue
            lines.append(line)
        if len(lines) + len(problems) > self.max_requests:
            problems.append(
                _line_error(
                    "too_many_requests",
                    f"A batch may hold at most {self.max_requests} requests.",
                    None,
                )
            )
        return lines, problems

    def _advance(self, batch: _Batch) -> None:
        """Move `batch` on to where its age puts it."""
        if batch.status in ("completed", "failed", "expired", "cancelled"):
            return
        if batch.status == "cancelling":
            self._finish(batch, batch.reached, "cancelled")
            return
        age = time.monotonic() - batch.started
        delay = self.faults.delay_s
        if age < delay * _VALIDATING_SHARE:
            return
        if batch.fate == "invalid" or batch.fate == "fail":
            if not batch.errors:
                batch.errors = [_line_error("invalid_request", "The batch failed validation.", 1)]
            batch.status = "failed"
            batch.stamps["failed"] = int(time.time())
            return
        if batch.status == "validating":
            batch.status = "in_progress"
            batch.stamps["in_progress"] = int(time.time())
        if age < delay or batch.fate == "stuck":
            return
        expired = batch.fate == "expire"
        self._finish(batch, 0.5 if expired else 1.0, "expired" if expired else "completed")

    def _finish(self, batch: _Batch, share: float, status: str) -> None:
        """Answer the first `share` of the lines at once and end the batch in `status`
        with its files: the rest are expired lines, or (cancelled) in no file."""
        lines, _ = self._input_lines(self._files[batch.input_file_id].content)
        answered = int(len(lines) * share)
        if status == "cancelled":
            lines = lines[:answered]
        output: list[bytes] = []
        errors: list[bytes] = []
        for index, line in enumerate(lines):
            entry: dict[str, Any] = {
                "id": f"batch_req_{uuid.uuid4().hex[:24]}",
                "custom_id": line["custom_id"],
                "response": None,
                "error": None,
            }
            request_id = f"req_{uuid.uuid4().hex}"
            if index >= answered:
                entry["error"] = {
                    "code": "batch_expired",
                    "message": "This request could not be executed before the "
                    "completion window expired.",
                }
                errors.append(_encoded(entry))
                batch.failed += 1
            elif self.faults.line_fault > 0 and self._rng.random() < self.faults.line_fault:
                entry["response"] = {
                    "status_code": 500,
                    "request_id": request_id,
                    "body": _server_error(),
                }
                errors.append(_encoded(entry))
                batch.failed += 1
                self.stats.batch_lines_failed += 1
            else:
                entry["response"] = {
                    "status_code": 200,
                    "request_id": request_id,
                    "body": self._composer.answer_chat(line["body"]),
                }
                output.append(_encoded(entry))
                batch.completed += 1
                self.stats.batch_lines_answered += 1
        now = int(time.time())
        batch.stamps["finalizing"] = now
        if output:
            batch.output_file_id = self._add_file(
                f"{batch.id}_output.jsonl", "batch_output", b"".join(output)
            ).id
        if errors:
            batch.error_file_id = self._add_file(
                f"{batch.id}_error.jsonl", "batch_output", b"".join(errors)
            ).id
        batch.status = status
        batch.stamps[status] = now

    def _cancel(self, batch: _Batch) -> None:
        if batch.status in ("validating", "in_progress"):
            batch.reached = self._progress(batch)
            batch.status = "cancelling"
            batch.stamps["cancelling"] = int(time.time())
            self.stats.batches_cancelled += 1

    def _progress(self, batch: _Batch) -> float:
        """The share of its lines an in-progress batch has got through by now."""
        if batch.fate != "complete":  # stuck, or bound to fail or expire
            return 0.0
        delay = self.faults.delay_s
        start = delay * _VALIDATING_SHARE
        age = time.monotonic() - batch.started
        return min(1.0, max(0.0, (age - start) / max(1e-9, delay - start)))


def _encoded(entry: dict[str, Any]) -> bytes:
    return json.dumps(entry, ensure_ascii=False).encode("utf-8") + b"\n"


def _line_error(code: str, message: str, line: int | None) -> dict[str, Any]:
    return {"code": code, "message": message, "param": None, "line": line}


def _invalid(message: str, param: str | None = None) -> dict[str, Any]:
    return {
        "error": {
            "message": message,
            "type": "invalid_request_error",
            "param": param,
            "code": None,
        }
    }


def _not_found(message: str) -> dict[str, Any]:
    return {
        "error": {
            "message": message,
            "type": "invalid_request_error",
            "param": None,
            "code": "not_found",
        }
    }


def _server_error() -> dict[str, Any]:
    return {
        "error": {
            "message": "The server had an error while processing your request. Sorry about that!",
            "type": "server_error",
            "param": None,
            "code": None,
        }
    }
