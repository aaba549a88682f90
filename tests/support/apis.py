"""APIs that answer badly, on loopback, for the tests of what the relay survives."""

from __future__ import annotations

import json
from http.server import BaseHTTPRequestHandler
from typing import Any


class Misbehaving(BaseHTTPRequestHandler):
    """A loopback API that answers badly: a gzip body that is not gzip, or echoes the key."""

    mode = "bad-gzip"
    seen: list[str] = []

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        type(self).seen.append(self.path)
        if type(self).mode == "bad-gzip":
            body = b"this is not gzip"
            self.send_response(202)
            self.send_header("Content-Encoding", "gzip")
        else:
            echoed = f"bad request; you sent Authorization: {self.headers['Authorization']}"
            body = json.dumps({"error": echoed}).encode()
            self.send_response(400)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass
