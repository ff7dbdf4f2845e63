"""A small threaded HTTP backend for the benchmark.

It is the upload sink behind nginx (``PUT /upload`` reads the whole body, then
answers with the number of bytes it got), and the whole backend when nginx is
missing (``GET /1k``, ``GET /100m`` from the files in ``--root``).
"""

from __future__ import annotations

import argparse
import os
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

CHUNK = 1 << 20


class Handler(BaseHTTPRequestHandler):
    """Serves files from the root and swallows uploads."""

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out in separate writes
    root = "."
    cache: dict[str, bytes] = {}

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass

    def _send(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def do_GET(self) -> None:
        name = self.path.split("?", 1)[0].lstrip("/")
        if not name or "/" in name or name.startswith("."):
            self._send(404, b"not found\n")
            return
        body = self.cache.get(name)
        if body is None:
            path = os.path.join(self.root, name)
            if not os.path.isfile(path):
                self._send(404, b"not found\n")
                return
            with open(path, "rb") as f:
                body = f.read()
            self.cache[name] = body
        self._send(200, body)

    do_HEAD = do_GET

    def do_PUT(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        buf = memoryview(bytearray(CHUNK))
        got = 0
        while got < length:
            n = self.rfile.readinto(buf[: min(CHUNK, length - got)])
            if not n:
                break
            got += n
        self._send(200 if got == length else 400, str(got).encode())

    do_POST = do_PUT


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--root", default=".")
    args = parser.parse_args()
    Handler.root = args.root
    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    server.daemon_threads = True
    server.request_queue_size = 1024
    print(f"LISTEN {server.server_address[1]}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    sys.exit(0)


if __name__ == "__main__":
    main()
