"""A fault-injecting HTTP proxy in front of the local AWS endpoint (127.0.0.1 only).

A process under test talks to the proxy; requests matching a rule get an injected error
(e.g. S3 ``503 SlowDown``) instead of reaching moto, the rest pass through.
"""

from __future__ import annotations

import http.client
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

SLOW_DOWN = (
    503,
    b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>',
)


@dataclass
class Rule:
    method: str
    path_part: str
    times: int  # how many matching requests fail; -1 = all
    response: tuple[int, bytes] = SLOW_DOWN
    content_type: str = "application/xml"
    hits: int = 0

    def matches(self, method: str, path: str) -> bool:
        return method == self.method and self.path_part in path and (self.times < 0 or self.hits < self.times)


@dataclass
class FaultProxy:
    upstream: str
    rules: list[Rule] = field(default_factory=list)
    seen: list[tuple[str, str, int]] = field(default_factory=list)

    @property
    def upstream_address(self) -> tuple[str, int]:
        parts = urlsplit(self.upstream)
        return parts.hostname, parts.port

    def start(self) -> str:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def _read_body(self):
                if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
                    chunks = []
                    while True:
                        size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                        if size == 0:
                            while self.rfile.readline().strip():  # trailers
                                pass
                            return b"".join(chunks)
                        chunks.append(self.rfile.read(size))
                        self.rfile.readline()
                length = int(self.headers.get("Content-Length") or 0)
                return self.rfile.read(length) if length else None

            def _handle(self):
                body = self._read_body()
                rule = next((r for r in proxy.rules if r.matches(self.command, self.path)), None)
                if rule:
                    rule.hits += 1
                    status, payload = rule.response
                    proxy.seen.append((self.command, self.path, status))
                    self.send_response(status)
                    self.send_header("Content-Type", rule.content_type)
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                    return
                headers = {
                    k: v for k, v in self.headers.items() if k.lower() not in ("host", "content-length", "transfer-encoding", "expect")
                }
                # http.client, not urllib: urllib would add a form Content-Type to bodies
                connection = http.client.HTTPConnection(*proxy.upstream_address, timeout=60)
                connection.request(self.command, self.path, body=body, headers=headers)
                response = connection.getresponse()
                status, data, out_headers = response.status, response.read(), response.headers
                connection.close()
                proxy.seen.append((self.command, self.path, status))
                self.send_response(status)
                for key, value in out_headers.items():
                    if key.lower() not in ("content-length", "transfer-encoding", "connection", "server", "date"):
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


THROTTLED = {"Error": {"Code": "TooManyRequestsException", "Message": "Too Many Requests"}}
SERVER_ERROR = {"Error": {"Code": "ServerException", "Message": "internal"}, "ResponseMetadata": {"HTTPStatusCode": 500}}


def throttling_hook(real_hook, first: int, error: dict = THROTTLED):
    """A stand-in for ``ScanJobTrigger._hook`` whose async Batch client answers the first
    ``first`` DescribeJobs with ``error`` (by default Batch's throttling error), as Batch
    does after botocore's own retries, and passes everything else to the real client.
    ``Hook.calls`` counts the DescribeJobs calls."""
    from botocore.exceptions import ClientError

    calls = {"n": 0}

    class FailingClient:
        def __init__(self, client):
            self.client = client

        async def describe_jobs(self, **kwargs):
            calls["n"] += 1
            if calls["n"] <= first:
                raise ClientError(error, "DescribeJobs")
            return await self.client.describe_jobs(**kwargs)

        def __getattr__(self, name):
            return getattr(self.client, name)

    class Hook:
        client = property(lambda self: real_hook().client)

        async def get_async_conn(self):
            conn = await real_hook().get_async_conn()

            class Wrapped:
                async def __aenter__(self_inner):
                    return FailingClient(await conn.__aenter__())

                async def __aexit__(self_inner, *exc):
                    return await conn.__aexit__(*exc)

            return Wrapped()

    Hook.calls = calls
    return Hook
