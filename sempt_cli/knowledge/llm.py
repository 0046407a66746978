"""Chat requests to any OpenAI-compatible endpoint: on-disk request cache, retries with backoff, no secrets on disk.

Why a cache keyed by the exact request: an LLM run over ImageNet is hundreds of paid requests. Every
answer, valid or not, is stored under the sha256 of (endpoint, request body) before it is used, so re-running
the same command, or resuming a run that was interrupted half-way (even mid re-ask), replays the stored
answers and only sends what was never answered. The body holds model, messages, sampling parameters and the
response format; it never holds the API key, which the official `openai` client sends as a header.

Why our own retry loop (the client's is switched off): every wait is visible to the user, a Retry-After
header (seconds, HTTP date or `retry-after-ms`) is honoured exactly, and an endpoint that asks for a longer
pause than `MAX_RETRY_AFTER` is reported instead of silently waited on.

Why the answer is read by hand (a streamed raw response, not the parsed completion): `llm.timeout` bounds the
whole request, not the gap between two bytes, so an endpoint that trickles cannot hang a run; and an answer
larger than `llm.max_answer_mb` is refused while it is being read, so it is never held in memory, cached, or
sent back in a re-ask.
"""

from __future__ import annotations

import email.utils
import hashlib
import json
import os
import random
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape

from sempt_cli.errors import SemptError
from sempt_cli.io import atomic_write_json
from sempt_cli.settings import LLMSettings

API_KEY_ENV = "OPENAI_API_KEY"
MAX_BACKOFF = 60.0
MAX_RETRY_AFTER = 300.0
"""Seconds; an endpoint asking for a longer pause (an exhausted quota, usually) is reported, not waited on."""
RETRYABLE_STATUS = frozenset({408, 409, 429})
CACHE_FORMAT = 1

Message = dict[str, str]


class EndpointError(SemptError):
    """The endpoint refused a request in a way retrying cannot fix, or kept failing after every retry."""


class _Overdue(Exception):
    """The request as a whole took longer than `llm.timeout` (retryable, like a read timeout)."""


class _NotACompletion(Exception):
    """The endpoint answered 200 with something that is not a chat completion (retryable)."""


class _Deadline(threading.local):
    """The end of the request this thread is sending (monotonic seconds), or None outside one."""

    at: float | None = None

    def cut(self, timeout: float | None) -> float | None:
        """`timeout`, shortened to what is left of the request (never 0, which would mean non-blocking)."""
        if self.at is None:
            return timeout
        left = max(self.at - time.monotonic(), 0.001)
        return left if timeout is None else min(timeout, left)


class _BoundStream:
    """A network stream whose every wait ends by the request's deadline: httpcore waits up to the read timeout
    per socket read, so headers trickled a byte at a time would otherwise never time out."""

    def __init__(self, stream: Any, deadline: _Deadline) -> None:
        self._stream, self._deadline = stream, deadline

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return bytes(self._stream.read(max_bytes, self._deadline.cut(timeout)))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._stream.write(buffer, self._deadline.cut(timeout))

    def close(self) -> None:
        self._stream.close()

    def start_tls(self, ssl_context: Any, server_hostname: str | None = None, timeout: float | None = None) -> Any:
        return _BoundStream(self._stream.start_tls(ssl_context, server_hostname, self._deadline.cut(timeout)),
                            self._deadline)

    def get_extra_info(self, info: str) -> Any:
        return self._stream.get_extra_info(info)


class _BoundBackend:
    """httpcore's network backend, handing out `_BoundStream`s."""

    def __init__(self, backend: Any, deadline: _Deadline) -> None:
        self._backend, self._deadline = backend, deadline

    def connect_tcp(self, host: str, port: int, timeout: float | None = None, local_address: str | None = None,
                    socket_options: Any = None) -> _BoundStream:
        stream = self._backend.connect_tcp(host, port, self._deadline.cut(timeout), local_address, socket_options)
        return _BoundStream(stream, self._deadline)

    def connect_unix_socket(self, path: str, timeout: float | None = None, socket_options: Any = None) -> _BoundStream:
        stream = self._backend.connect_unix_socket(path, self._deadline.cut(timeout), socket_options)
        return _BoundStream(stream, self._deadline)

    def sleep(self, seconds: float) -> None:
        self._backend.sleep(seconds)


def _bound_http_client(deadline: _Deadline) -> Any:
    """openai's default HTTP client with every connection pool's network backend bound to `deadline`.

    httpx does not expose the pool's backend (httpcore's documented extension point), so it is replaced on the
    pools the client built; `test_a_trickling_endpoint_ends_within_the_total_timeout` guards this. Were the
    attributes ever gone, the body would still be bounded by `_post`'s own check between chunks."""
    import openai

    client = openai.DefaultHttpxClient()
    for transport in [client._transport, *client._mounts.values()]:
        pool = getattr(transport, "_pool", None)
        if pool is not None and hasattr(pool, "_network_backend"):
            pool._network_backend = _BoundBackend(pool._network_backend, deadline)
    return client


def resolve_api_key(llm: LLMSettings, env: Mapping[str, str] | None = None) -> str:
    """`llm.api_key` if set, else $OPENAI_API_KEY; never logged or written anywhere."""
    if llm.api_key is not None and llm.api_key.get_secret_value():
        return llm.api_key.get_secret_value()
    key = (os.environ if env is None else env).get(API_KEY_ENV, "")
    if not key:
        raise SemptError(
            f"No API key for {llm.base_url}: set {API_KEY_ENV} (or llm.api_key via SEMPT_LLM__API_KEY or a "
            "config file).",
            "Local servers that ignore the key (vLLM, Ollama) accept any value, e.g. OPENAI_API_KEY=none; "
            "--dry-run needs no key.",
        )
    return key


@dataclass(frozen=True)
class ChatRequest:
    """One POST to `{endpoint}/chat/completions`: `body` is exactly what is sent (minus transport headers)."""

    endpoint: str
    body: dict[str, Any]

    @property
    def key(self) -> str:
        payload = json.dumps({"endpoint": self.endpoint, "body": self.body}, sort_keys=True, ensure_ascii=False,
                             separators=(",", ":"))
        return hashlib.sha256(payload.encode("utf-8")).hexdigest()

    @property
    def messages(self) -> list[Message]:
        return list(self.body["messages"])


@dataclass(frozen=True)
class ChatAnswer:
    """The assistant's text and why it stopped ("length" = cut off at the output limit)."""

    content: str | None
    finish_reason: str | None
    usage: dict[str, int] = field(default_factory=dict)
    cached: bool = False


class RequestCache:
    """`<root>/<key[:2]>/<key>.json`: the request and its answer, written atomically once answered."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def path_for(self, request: ChatRequest) -> Path:
        key = request.key
        return self.root / key[:2] / f"{key}.json"

    def get(self, request: ChatRequest) -> ChatAnswer | None:
        path = self.path_for(request)
        try:
            entry = json.loads(path.read_text(encoding="utf-8"))
        except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
            return None
        if entry.get("format") != CACHE_FORMAT or entry.get("request") != {"endpoint": request.endpoint,
                                                                           "body": request.body}:
            return None  # a hash collision or a foreign file: treat as a miss
        answer = entry["answer"]
        return ChatAnswer(answer.get("content"), answer.get("finish_reason"), answer.get("usage") or {}, cached=True)

    def put(self, request: ChatRequest, answer: ChatAnswer, model: str | None = None) -> None:
        atomic_write_json(self.path_for(request), {
            "format": CACHE_FORMAT,
            "request": {"endpoint": request.endpoint, "body": request.body},
            "answer": {"content": answer.content, "finish_reason": answer.finish_reason, "usage": answer.usage,
                       "model": model},
            "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        })

    def evict(self, request: ChatRequest) -> None:
        self.path_for(request).unlink(missing_ok=True)


@dataclass
class Usage:
    """What a run cost: requests actually sent (retries included), answers replayed, tokens billed."""

    sent: int = 0
    cached: int = 0
    retries: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0


class Stopped(Exception):
    """Raised in a worker when the run is being stopped (another request failed for good, or Ctrl-C)."""


def retry_after_seconds(headers: Mapping[str, str] | None) -> float | None:
    """Retry-After as seconds: `retry-after-ms`, `retry-after` in seconds, or an HTTP date."""
    if not headers:
        return None
    lowered = {k.lower(): v for k, v in headers.items()}
    for name, divisor in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        value = lowered.get(name)
        if value is None:
            continue
        try:
            return max(0.0, float(value) / divisor)
        except ValueError:
            parsed = email.utils.parsedate_tz(value)
            if parsed is not None:
                return max(0.0, email.utils.mktime_tz(parsed) - time.time())
    return None


class LLMClient:
    """Builds requests from settings and completes them through the cache, retrying transient failures.

    Thread-safe: one instance serves every worker of a run. `sleep` is injectable so tests need not wait.
    """

    def __init__(
        self,
        llm: LLMSettings,
        cache: RequestCache,
        *,
        api_key: str | None = None,
        console: Console | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.llm = llm
        self.cache = cache
        self._api_key = api_key
        self.console = console or Console(stderr=True)
        self.sleep = sleep
        self.usage = Usage()
        self.stop = threading.Event()
        self._lock = threading.Lock()
        self._client: Any = None
        self._deadline = _Deadline()

    # ------------------------------------------------------------------ requests
    def build(self, messages: Sequence[Message], response_format: Mapping[str, Any] | None) -> ChatRequest:
        """The request body for `messages`; the response format follows `llm.response_format`."""
        body: dict[str, Any] = {"model": self.llm.model, "messages": [dict(m) for m in messages]}
        if self.llm.temperature is not None:
            body["temperature"] = self.llm.temperature
        if self.llm.seed is not None:
            body["seed"] = self.llm.seed
        if self.llm.response_format == "json_schema" and response_format is not None:
            body["response_format"] = dict(response_format)
        elif self.llm.response_format == "json_object":
            body["response_format"] = {"type": "json_object"}
        return ChatRequest(self.llm.base_url, body)

    def cached(self, request: ChatRequest) -> ChatAnswer | None:
        return self.cache.get(request)

    def complete(self, request: ChatRequest) -> ChatAnswer:
        """The cached answer, or a fresh one (stored before it is returned)."""
        answer = self.cache.get(request)
        if answer is not None:
            with self._lock:
                self.usage.cached += 1
            return answer
        if self.stop.is_set():
            raise Stopped
        answer, model = self._send(request)
        self.cache.put(request, answer, model)
        return answer

    # ------------------------------------------------------------------ transport
    def _openai(self) -> Any:
        with self._lock:
            if self._client is None:
                import openai

                key = self._api_key if self._api_key is not None else resolve_api_key(self.llm)
                self._client = openai.OpenAI(api_key=key, base_url=self.llm.base_url, timeout=self.llm.timeout,
                                             max_retries=0, http_client=_bound_http_client(self._deadline))
            return self._client

    def _post(self, client: Any, request: ChatRequest) -> dict[str, Any]:
        """POST the request and read its answer within `llm.timeout` seconds in all and `llm.max_answer_mb`."""
        limit = int(self.llm.max_answer_mb * 1024 * 1024)
        deadline = time.monotonic() + self.llm.timeout
        self._deadline.at = deadline
        try:
            with client.chat.completions.with_streaming_response.create(**request.body) as response:
                declared = response.headers.get("content-length", "")
                if declared.isdigit() and int(declared) > limit:
                    raise self._oversize()
                body = bytearray()
                for chunk in response.iter_bytes():
                    body += chunk
                    if len(body) > limit:
                        raise self._oversize()
                    if time.monotonic() > deadline:
                        raise _Overdue
        finally:
            self._deadline.at = None
        try:
            completion = json.loads(body)
        except (UnicodeDecodeError, ValueError):
            raise _NotACompletion from None
        if not isinstance(completion, dict):
            raise _NotACompletion
        return completion

    def _oversize(self) -> EndpointError:
        return EndpointError(
            f"{self.llm.base_url} sent an answer larger than llm.max_answer_mb ({self.llm.max_answer_mb:g} MB); "
            "it was discarded unread, not cached and not sent back.",
            "Raise --max-answer-mb if answers this long are expected; answers received so far are cached.",
        )

    def _send(self, request: ChatRequest) -> tuple[ChatAnswer, str | None]:
        import httpx2
        import openai

        client = self._openai()
        attempts = self.llm.retries + 1
        for attempt in range(1, attempts + 1):
            try:
                completion = self._post(client, request)
            except openai.APIStatusError as exc:
                status = exc.status_code
                if status not in RETRYABLE_STATUS and status < 500:
                    raise _refused(exc, self.llm) from None
                problem, headers = f"HTTP {status}", dict(exc.response.headers)
            except (openai.APITimeoutError, httpx2.TimeoutException, _Overdue):
                problem, headers = f"no answer within {self.llm.timeout:g} s", None
            except _NotACompletion:
                problem, headers = "an answer that is not a JSON chat completion", None
            except openai.APIConnectionError as exc:
                problem, headers = f"connection failed ({exc.__cause__ or exc})", None
            except httpx2.TransportError as exc:
                problem, headers = f"connection failed ({exc})", None
            else:
                with self._lock:
                    self.usage.sent += 1
                    usage = _usage(completion)
                    self.usage.prompt_tokens += usage.get("prompt_tokens", 0)
                    self.usage.completion_tokens += usage.get("completion_tokens", 0)
                content, finish = _first_choice(completion)
                model = completion.get("model")
                return ChatAnswer(content, finish, usage), model if isinstance(model, str) else None
            with self._lock:
                self.usage.sent += 1
            if attempt == attempts:
                raise EndpointError(
                    f"{self.llm.base_url} failed {attempts} times in a row ({problem}).",
                    "Answers received so far are cached: re-run the same command to resume.",
                )
            delay = self._delay(attempt, headers, problem)
            with self._lock:
                self.usage.retries += 1
            self.console.print(f"[yellow]{escape(problem)}[/] from {escape(self.llm.base_url)}; "
                               f"retry {attempt}/{self.llm.retries} in {delay:.1f} s")
            self._wait(delay)
        raise AssertionError("unreachable")

    def _delay(self, attempt: int, headers: Mapping[str, str] | None, problem: str) -> float:
        """Retry-After when the server gives one, else exponential backoff with jitter."""
        requested = retry_after_seconds(headers)
        if requested is not None:
            if requested > MAX_RETRY_AFTER:
                raise EndpointError(
                    f"{self.llm.base_url} answered {problem} and asks to wait {requested:.0f} s before retrying "
                    "(a quota is probably exhausted).",
                    "Answers received so far are cached: re-run the same command later to resume.",
                )
            return requested
        base = min(MAX_BACKOFF, self.llm.backoff * 2 ** (attempt - 1))
        return base * (0.75 + 0.25 * random.random())

    def _wait(self, seconds: float) -> None:
        """Sleep, but wake up early (and stop) when the run is being stopped."""
        if self.sleep is time.sleep:
            if self.stop.wait(seconds):
                raise Stopped
        else:
            self.sleep(seconds)


def _usage(completion: Mapping[str, Any]) -> dict[str, int]:
    usage = completion.get("usage")
    if not isinstance(usage, dict):
        return {}
    return {name: usage[name] for name in ("prompt_tokens", "completion_tokens")
            if isinstance(usage.get(name), int) and not isinstance(usage[name], bool)}


def _first_choice(completion: Mapping[str, Any]) -> tuple[str | None, str | None]:
    """(content, finish_reason) of the first choice; None where the endpoint left them out."""
    choices = completion.get("choices")
    choice = choices[0] if isinstance(choices, list) and choices and isinstance(choices[0], dict) else {}
    message = choice.get("message")
    content = message.get("content") if isinstance(message, dict) else None
    finish = choice.get("finish_reason")
    return (content if isinstance(content, str) else None), (finish if isinstance(finish, str) else None)


def _refused(exc: Any, llm: LLMSettings) -> EndpointError:
    status = exc.status_code
    detail = _error_detail(exc)
    if status in (401, 403):
        return EndpointError(f"{llm.base_url} rejected the API key (HTTP {status}: {detail}).",
                             f"Check {API_KEY_ENV} (or llm.api_key) and --base-url.")
    if status == 404:
        return EndpointError(f"{llm.base_url} has no chat-completions route or no model {llm.model!r} "
                             f"(HTTP 404: {detail}).", "Check --base-url (usually ending in /v1) and --model.")
    hint = None
    if status in (400, 422) and llm.response_format != "text":
        hint = ("If the server does not support structured outputs, try --response-format json_object "
                "or --response-format text.")
    return EndpointError(f"{llm.base_url} refused the request (HTTP {status}: {detail}).", hint)


def _error_detail(exc: Any) -> str:
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        error = body.get("error", body)
        message = error.get("message") if isinstance(error, dict) else error
        if message:
            return str(message)[:300]
    return str(getattr(exc, "message", exc))[:300]
