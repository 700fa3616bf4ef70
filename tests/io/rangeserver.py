"""A loopback HTTP server for tests and benchmarks: serves a folder, honouring `Range: bytes=a-b` with 206 (the
standard library's SimpleHTTPRequestHandler ignores ranges), or, with `ranges=False`, ignoring them as such servers
do. Counts requests and bytes sent."""
from __future__ import annotations

import os
import re
import threading
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

RANGE = re.compile(r"bytes=(\d+)-(\d*)$")


def _handler(root: Path, ranges: bool, stats: dict):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True  # headers and body go out at once (no 40 ms delayed-ACK stalls)

        def log_message(self, *args):
            pass

        def _file(self) -> Path | None:
            p = (root / self.path.lstrip("/").split("?")[0]).resolve()
            return p if p.is_file() and root in p.parents else None

        def do_HEAD(self):
            self._serve(body=False)

        def do_GET(self):
            self._serve(body=True)

        def _serve(self, body: bool):
            p = self._file()
            with stats["lock"]:
                stats["requests"] += 1
            if p is None:
                self.send_response(404)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            size = p.stat().st_size
            begin, end, status = 0, size, 200
            m = RANGE.match(self.headers.get("Range", "")) if ranges else None
            if m:
                begin = int(m.group(1))
                end = min(int(m.group(2)) + 1, size) if m.group(2) else size
                if begin >= size:
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{size}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                status = 206
            self.send_response(status)
            self.send_header("Content-Length", str(end - begin))
            if ranges:
                self.send_header("Accept-Ranges", "bytes")
            if status == 206:
                self.send_header("Content-Range", f"bytes {begin}-{end - 1}/{size}")
            self.end_headers()
            if not body:
                return
            with open(p, "rb") as fh:
                fh.seek(begin)
                left = end - begin
                try:
                    while left:
                        chunk = fh.read(min(left, 1 << 20))
                        self.wfile.write(chunk)
                        left -= len(chunk)
                        with stats["lock"]:
                            stats["bytes"] += len(chunk)
                except (BrokenPipeError, ConnectionResetError):
                    pass

    return Handler


class _QuietServer(ThreadingHTTPServer):
    """A client that hangs up mid-response (a refused read, a cancelled read-ahead) is normal here: socketserver
    would print its traceback to stderr, which the tests read as the command's output."""

    def handle_error(self, request, client_address):
        pass


@contextmanager
def serve(root: str | os.PathLike, ranges: bool = True):
    """Serve `root` on 127.0.0.1 (a free port): yields (base URL, stats dict)."""
    stats = {"requests": 0, "bytes": 0, "lock": threading.Lock()}
    server = _QuietServer(("127.0.0.1", 0), _handler(Path(root).resolve(), ranges, stats))
    server.daemon_threads = True
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", stats
    finally:
        server.shutdown()
        server.server_close()
