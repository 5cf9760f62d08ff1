"""A loopback OpenAI-compatible chat server (POST /v1/chat/completions, as vLLM serves it) for tests and benchmarks.

``behaviour``: 'good' (a rule-following 'model'), 'garbage' (chatty answers that do not follow instructions),
'broken' (HTTP 200 with a non-JSON body). A prompt with the word 'enormous' gets HTTP 400 (too long). ``latency``: seconds each answer takes. ``outage``: seconds, counted
from the first request, during which every request gets ``503`` with ``Retry-After`` (``math.inf``: it never
recovers). The server counts requests, refusals and the most requests it held at once (``max_in_flight``).
"""

from __future__ import annotations

import json
import re
import sys
import threading
import time
from http.server import ThreadingHTTPServer

from .loopback import LoopbackHandler


class ChatServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 512  # many clients connect at once

    def __init__(self, behaviour="good", latency=0.0, outage=0.0, retry_after="1", port=0):
        super().__init__(("127.0.0.1", port), ChatHandler)
        self.behaviour, self.latency, self.outage, self.retry_after = behaviour, latency, outage, retry_after
        self.requests, self.refused, self.in_flight, self.max_in_flight = [], 0, 0, 0
        self.first_request, self.closed = None, False
        self.lock = threading.Lock()

    @property
    def url(self):
        return f"http://127.0.0.1:{self.server_address[1]}/v1"

    def handle_error(self, request, client_address):
        """A client that went away (killed mid-request) is not an error of the server."""
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)

    def __enter__(self):
        threading.Thread(target=self.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self.shutdown()
        self.server_close()
        self.closed = True  # handlers of kept-alive connections hang up instead of answering


def serve(ports, **settings):
    """Run a server in this (child) process until it is killed; its port goes into the ``ports`` queue."""
    with ChatServer(**settings) as server:
        ports.put(server.server_address[1])
        threading.Event().wait()


class ChatHandler(LoopbackHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as vLLM's server
    disable_nagle_algorithm = True  # headers and body go out in two writes: no 40 ms delayed-ACK stall

    def do_GET(self):
        """``/stats``: the counters, for a client in another process."""
        server = self.server
        with server.lock:
            stats = {"requests": len(server.requests), "refused": server.refused, "max_in_flight": server.max_in_flight}
        self.send_body(json.dumps(stats).encode())

    def do_POST(self):
        server = self.server
        if server.closed:  # a stopped server: the client sees the connection drop
            self.close_connection = True
            return
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with server.lock:
            server.in_flight += 1
            server.max_in_flight = max(server.max_in_flight, server.in_flight)
            server.first_request = server.first_request or time.monotonic()
            down = time.monotonic() - server.first_request < server.outage
            server.refused += down
            if not down:
                server.requests.append((self.path, body))
        if not down:
            time.sleep(server.latency)
        with server.lock:
            server.in_flight -= 1
        if down:
            return self.send_body(b'{"error": "loading"}', 503, {"Retry-After": server.retry_after})
        if server.behaviour == "broken":
            return self.send_body(b"<html>upstream error</html>")
        if "enormous" in body["messages"][-1]["content"]:  # as a prompt over the model's context length
            return self.send_body(b'{"error": "maximum context length exceeded"}', 400)
        reply = {"id": "x", "object": "chat.completion", "model": body["model"],
                 "choices": [{"index": 0, "message": {"role": "assistant", "content": self._answer(body)},
                              "finish_reason": "stop"}]}  # fmt: skip
        self.send_body(json.dumps(reply).encode())

    def _answer(self, body):
        prompt = body["messages"][-1]["content"]
        garbage = self.server.behaviour == "garbage"
        if "Name ONE" in prompt:
            return "Well, I would say that maybe it's an umbrella!" if garbage else "An umbrella."
        caption, obj = re.search(r'Caption: "(.*)"\nObject: (.*)\n', prompt).groups()
        if garbage:
            return "Sure! Here is your caption."
        if "remove every other mention" in prompt:
            return f"A picture with no {obj}."
        return f"{caption.rstrip('.')} without any {obj}."
