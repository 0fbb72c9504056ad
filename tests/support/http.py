"""A real HTTP server on 127.0.0.1 for image downloads: Range support, cut-off responses."""

from __future__ import annotations

from http.server import BaseHTTPRequestHandler
from typing import ClassVar


class Files(BaseHTTPRequestHandler):
    """Serves bytes with Range support; can cut a response off after ``cut`` bytes."""

    content: ClassVar[bytes] = b""
    cut: ClassVar[int | None] = None
    ranges: ClassVar[list[str | None]] = []

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        type(self).ranges.append(self.headers.get("Range"))
        data, start = self.content, 0
        header = self.headers.get("Range")
        if header:
            start = int(header.removeprefix("bytes=").split("-")[0])
            if start >= len(data):
                self.send_response(416)
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.cut is not None and not header:
            self.wfile.write(body[: self.cut])
            self.wfile.flush()
            self.connection.shutdown(2)
            return
        self.wfile.write(body)
