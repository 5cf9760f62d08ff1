"""The request handler base of the loopback servers that stand in for real services in tests and speed scripts
(the OpenAI-compatible chat server here, the tests' Hub server): quiet, with one way to answer."""

from __future__ import annotations

from http.server import BaseHTTPRequestHandler


class LoopbackHandler(BaseHTTPRequestHandler):
    def log_message(self, *args):  # keep test output clean; the servers record the requests they need
        pass

    def send_body(
        self,
        data: bytes,
        status: int = 200,
        headers: dict | None = None,
        content_type: str = "application/json",
        head: bool = False,
    ) -> None:
        """Answer ``status`` with ``data`` (headers only for a HEAD request) and any extra ``headers``."""
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if not head:
            self.wfile.write(data)
