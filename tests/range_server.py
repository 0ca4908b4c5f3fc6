"""A local HTTP server on 127.0.0.1 that answers range requests as object stores do, counts the
bytes it sends per file, and refuses files with 403 as an expired signed URL does: for remote
inputs (STAC items, band URLs) read through GDAL's /vsicurl/."""
from __future__ import annotations

import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Iterator

import pytest


@dataclass
class Served:
    """The running server: its base URL, the folder it serves and what it has done."""

    base: str
    root: Path
    #: bytes sent per file (its path under ``root``, as requested), bodies of GET responses
    sent: dict[str, int] = field(default_factory=dict)
    #: files (paths under ``root``) refused with 403 from now on (a signed URL that expired)
    expired: set[str] = field(default_factory=set)
    #: file (path under ``root``) → GET requests still answered before it is refused with 403
    expire_after: dict[str, int] = field(default_factory=dict)

    def reset(self) -> None:
        self.sent.clear()
        self.expired.clear()
        self.expire_after.clear()


class _Handler(BaseHTTPRequestHandler):
    served: Served
    lock = threading.Lock()

    def log_message(self, *args) -> None:  # quiet
        pass

    def _name(self) -> str:
        return self.path.split("?", 1)[0].lstrip("/")

    def _file(self, counts: bool) -> Path | None:
        name = self._name()
        with self.lock:
            left = self.served.expire_after.get(name)
            if counts and left is not None:
                self.served.expire_after[name] = left - 1
            refused = name.startswith("forbidden/") or name in self.served.expired or (left is not None and left <= 0)
        if refused:
            self._empty(403)
            return None
        path = self.served.root / name
        if not path.is_file():
            self._empty(404)
            return None
        return path

    def _empty(self, status: int) -> None:
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_HEAD(self) -> None:  # noqa: N802
        path = self._file(counts=False)
        if path is not None:
            self.send_response(200)
            self.send_header("Content-Length", str(path.stat().st_size))
            self.send_header("Accept-Ranges", "bytes")
            self.end_headers()

    def do_GET(self) -> None:  # noqa: N802
        path = self._file(counts=True)
        if path is None:
            return
        data = path.read_bytes()
        match = re.match(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
        if match:
            start = int(match.group(1))
            end = min(int(match.group(2)) if match.group(2) else len(data) - 1, len(data) - 1)
            body = data[start:end + 1]
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{end}/{len(data)}")
        else:
            body = data
            self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        self.wfile.write(body)
        with self.lock:
            self.served.sent[self._name()] = self.served.sent.get(self._name(), 0) + len(body)


def serve(root: Path) -> Iterator[Served]:
    """Serve ``root`` until the generator is closed (use it as a pytest fixture's body)."""
    served = Served(base="", root=root)
    handler = type("Handler", (_Handler,), {"served": served})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    served.base = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield served
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[Served]:
    """A range server on 127.0.0.1 for the importing test module (import this fixture and
    :func:`_server_reset` there), serving a fresh folder, stopped after the module."""
    yield from serve(tmp_path_factory.mktemp("served"))


@pytest.fixture(autouse=True)
def _server_reset(server) -> None:
    """Each test starts with the server's request counts and failure switches cleared."""
    server.reset()
