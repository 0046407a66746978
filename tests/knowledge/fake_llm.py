"""A small OpenAI-compatible chat server on 127.0.0.1 for tests: a scripted "LLM" over real HTTP.

By default it answers like a perfect model: it reads the requested ids, names, vocabulary and counts from the
prompt and returns valid JSON. `hook(body, hit)` may return a `Reply` to inject faults (malformed JSON, a
429 with Retry-After, a 500, a slow answer, a trickled answer, an enormous answer, a wrong answer) for chosen
requests. Every request is recorded
(`hits`) with its status, so tests can count requests and prove that none was repeated.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

TRICKLE_FOR = 5.0
"""A trickled answer ends (the connection closes) after this long, so no test can hang on one."""
CHUNK = 64 * 1024

CLASS_LINE = re.compile(r'^\{"id": (\d+), "name": "(.*)"\}$', re.M)


@dataclass
class Reply:
    """A scripted HTTP reply: `content` becomes the assistant message unless `raw` (a whole body) is given."""

    status: int = 200
    content: str | None = None
    finish_reason: str = "stop"
    headers: dict[str, str] = field(default_factory=dict)
    raw: dict[str, Any] | None = None
    delay: float = 0.0
    trickle: float = 0.0
    """Seconds between single bytes of the body, sent after the headers (for at most `TRICKLE_FOR` seconds)."""
    trickle_headers: bool = False
    """With `trickle`: trickle from the status line on, so even the headers never complete in time."""
    size: int = 0
    """Stream an answer of this many bytes, without a Content-Length, until the client stops reading."""


@dataclass
class Hit:
    body: dict[str, Any]
    authorization: str
    path: str
    status: int = 0
    time: float = 0.0
    bytes_sent: int = 0

    @property
    def key(self) -> str:
        return json.dumps(self.body, sort_keys=True)


def _first_user(body: dict[str, Any]) -> str:
    return next(m["content"] for m in body["messages"] if m["role"] == "user")


def _last_user(body: dict[str, Any]) -> str:
    return [m["content"] for m in body["messages"] if m["role"] == "user"][-1]


def request_kind(body: dict[str, Any]) -> str:
    first = _first_user(body)
    if '{"attributes": [' in first:
        return "merge" if "Merge them" in first else "vocabulary"
    return "two-step" if '"attributes": ["...", "..."]' in first else "one-step"


def requested_classes(body: dict[str, Any]) -> list[tuple[int, str]]:
    """(id, name) pairs of the last user message (a re-ask lists only the classes still wanted)."""
    return [(int(i), name) for i, name in CLASS_LINE.findall(_last_user(body))]


def perfect_answer(body: dict[str, Any]) -> str:
    """What a model that follows every rule would answer."""
    kind = request_kind(body)
    first = _first_user(body)
    if kind in ("vocabulary", "merge"):
        count = int(re.search(r"lists exactly (\d+) attributes", first).group(1))  # type: ignore[union-attr]
        prefix = "merged aspect" if kind == "merge" else "aspect"
        return json.dumps({"attributes": [f"{prefix} {i}" for i in range(count)]})
    count = int(re.search(r"exactly (\d+) distinct descriptions", first).group(1))  # type: ignore[union-attr]
    classes = []
    if kind == "two-step":
        block = first.split("Shared vocabulary of visual attributes:\n", 1)[1].split("\n\n", 1)[0]
        vocabulary = [line[2:] for line in block.splitlines()]
        for label, name in requested_classes(body):
            descriptions = [{"text": f"{name} seen as look {j}",
                             "attributes": [vocabulary[j % len(vocabulary)], vocabulary[(j + 1) % len(vocabulary)]]}
                            for j in range(count)]
            classes.append({"id": label, "name": name, "descriptions": descriptions})
    else:
        for label, name in requested_classes(body):
            classes.append({"id": label, "name": name, "descriptions": [f"{name} seen as look {j}"
                                                                        for j in range(count)]})
    return json.dumps({"classes": classes})


class FakeLLM:
    """Serve `/v1/chat/completions` in a background thread; use as a context manager."""

    def __init__(self, hook: Callable[[dict[str, Any], int], Reply | None] | None = None) -> None:
        self.hook = hook
        self.hits: list[Hit] = []
        self._lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def base_url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}/v1"

    def __enter__(self) -> FakeLLM:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)

    def answered(self) -> list[Hit]:
        """Requests that got a 200 (the ones a real endpoint would bill)."""
        return [h for h in self.hits if h.status == 200]

    def _reply(self, body: dict[str, Any], hit: int) -> Reply:
        scripted = self.hook(body, hit) if self.hook is not None else None
        if scripted is None:
            return Reply(content=perfect_answer(body))
        if scripted.status == 200 and scripted.content is None and scripted.raw is None:
            scripted.content = perfect_answer(body)
        return scripted

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            timeout = 10  # a stuck client cannot hold a server thread forever

            def log_message(self, format: str, *args: Any) -> None:  # silence the default stderr log
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = json.loads(self.rfile.read(length) or b"{}")
                record = Hit(body, self.headers.get("Authorization", ""), self.path, time=time.monotonic())
                with fake._lock:
                    fake.hits.append(record)
                    number = len(fake.hits)
                if not self.path.endswith("/chat/completions"):
                    self._send(404, {"error": {"message": f"no route {self.path}"}}, {})
                    record.status = 404
                    return
                reply = fake._reply(body, number)
                if reply.delay:
                    time.sleep(reply.delay)
                if reply.size:
                    record.status = reply.status if self._send_huge(reply.size, record) else -1
                    return
                if reply.status != 200:
                    payload: dict[str, Any] = reply.raw or {"error": {"message": f"scripted {reply.status}",
                                                                       "type": "test"}}
                else:
                    payload = reply.raw or {
                        "id": f"chatcmpl-{number}", "object": "chat.completion", "created": 0,
                        "model": body.get("model", "fake"),
                        "choices": [{"index": 0, "finish_reason": reply.finish_reason,
                                     "message": {"role": "assistant", "content": reply.content}}],
                        "usage": {"prompt_tokens": 100, "completion_tokens": 50, "total_tokens": 150},
                    }
                sent = self._send(reply.status, payload, reply.headers, reply.trickle, reply.trickle_headers)
                record.status = reply.status if sent else -1

            def _send(self, status: int, payload: dict[str, Any], headers: dict[str, str],
                      reply_trickle: float = 0.0, trickle_headers: bool = False) -> bool:
                data = json.dumps(payload).encode()
                try:
                    if trickle_headers:
                        fields = {"Content-Type": "application/json", "Content-Length": str(len(data)), **headers}
                        head = f"HTTP/1.1 {status} Fake\r\n" + "".join(f"{k}: {v}\r\n" for k, v in fields.items())
                        data = (head + "\r\n").encode() + data
                    else:
                        self.send_response(status)
                        self.send_header("Content-Type", "application/json")
                        self.send_header("Content-Length", str(len(data)))
                        for name, value in headers.items():
                            self.send_header(name, value)
                        self.end_headers()
                    if not reply_trickle:
                        self.wfile.write(data)
                        return True
                    start = time.monotonic()
                    for byte in range(len(data)):
                        if time.monotonic() - start > TRICKLE_FOR:
                            return False
                        self.wfile.write(data[byte : byte + 1])
                        self.wfile.flush()
                        time.sleep(reply_trickle)
                    return True
                except (BrokenPipeError, ConnectionResetError):
                    return False  # the client gave up (a timeout test)

            def _send_huge(self, size: int, record: Hit) -> bool:
                """A valid completion whose content is `size` bytes of 'x', written chunk by chunk (never whole)."""
                head = b'{"id": "chatcmpl-huge", "object": "chat.completion", "choices": [{"index": 0, ' \
                       b'"finish_reason": "stop", "message": {"role": "assistant", "content": "'
                filler = b"x" * CHUNK
                try:
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.end_headers()
                    self.wfile.write(head)
                    record.bytes_sent = len(head)
                    while record.bytes_sent < size:
                        self.wfile.write(filler)
                        record.bytes_sent += len(filler)
                    self.wfile.write(b'"}}]}')
                    return True
                except (BrokenPipeError, ConnectionResetError):
                    return False

        return Handler
