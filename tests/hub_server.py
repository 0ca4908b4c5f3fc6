"""A Hugging Face Hub emulation on 127.0.0.1 for the model zoo tests (no internet).

It answers what ``huggingface_hub.hf_hub_download`` asks, as the real Hub does:
``HEAD``/``GET {endpoint}/{repo}/resolve/{revision}/{file}`` with ``X-Repo-Commit`` and the
``ETag`` (git blob sha1) of a plain git file, or for an LFS file a redirect to a CDN of
another origin with ``X-Linked-Etag`` (its sha256) and ``X-Linked-Size``; the CDN serves
``Range`` requests (206). Errors carry the Hub's ``X-Error-Code`` (RepoNotFound,
RevisionNotFound, EntryNotFound). Faults on demand: a file served corrupted, a transfer that
drops the connection half way the first time. Every request is recorded.
"""
from __future__ import annotations

import hashlib
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote

LFS_FILES = ("model.safetensors",)


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class Repo:
    refs: dict[str, str] = field(default_factory=dict)  # branch or tag → commit
    commits: dict[str, dict[str, bytes]] = field(default_factory=dict)  # commit → file → content


class FakeHub:
    """Start with ``with FakeHub() as hub:`` (or :meth:`start`); :attr:`endpoint` is for ``HF_ENDPOINT``."""

    def __init__(self) -> None:
        self.repos: dict[str, Repo] = {}
        self.blobs: dict[str, bytes] = {}  # sha256 → content (the CDN)
        self.corrupt: set[str] = set()  # sha256s served with one byte changed
        self.drop_once: set[str] = set()  # sha256s whose next transfer stops half way
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        self._lock = threading.Lock()
        self._servers: list[ThreadingHTTPServer] = []

    # --- content ------------------------------------------------------------------------------
    def add_commit(self, repo_id: str, files: dict[str, bytes], *, branch: str = "main") -> str:
        repo = self.repos.setdefault(repo_id, Repo())
        commit = hashlib.sha1(repo_id.encode() + b"".join(sorted(files.values())) + str(len(repo.commits)).encode()).hexdigest()
        repo.commits[commit] = dict(files)
        repo.refs[branch] = commit
        for name, data in files.items():
            if name in LFS_FILES:
                self.blobs[hashlib.sha256(data).hexdigest()] = data
        return commit

    # --- server -------------------------------------------------------------------------------
    def start(self) -> "FakeHub":
        for role in ("hub", "cdn"):
            server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self, role))
            server.daemon_threads = True
            threading.Thread(target=server.serve_forever, daemon=True).start()
            self._servers.append(server)
        return self

    def stop(self) -> None:
        for server in self._servers:
            server.shutdown()
            server.server_close()
        self._servers = []

    def __enter__(self) -> "FakeHub":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self._servers[0].server_address[1]}"

    @property
    def cdn(self) -> str:
        return f"http://127.0.0.1:{self._servers[1].server_address[1]}"

    def transfers(self) -> list[tuple[str, dict[str, str]]]:
        """The CDN GETs: (path, headers with lower-case names)."""
        return [(path, headers) for method, path, headers in self.requests if method == "GET" and path.startswith("/cdn/")]


_RESOLVE = re.compile(r"^/(?P<repo>[^/]+/[^/]+)/resolve/(?P<revision>[^/]+)/(?P<file>.+)$")


def _handler(hub: FakeHub, role: str) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:  # quiet
            pass

        def do_HEAD(self) -> None:  # noqa: N802 - http.server API
            self._answer(body=False)

        def do_GET(self) -> None:  # noqa: N802 - http.server API
            self._answer(body=True)

        def _answer(self, body: bool) -> None:
            with hub._lock:
                hub.requests.append((self.command, self.path, {k.lower(): v for k, v in self.headers.items()}))
            if role == "cdn":
                self._cdn(body)
            else:
                self._resolve(body)

        def _send(self, status: int, headers: dict[str, str], data: bytes = b"", body: bool = True) -> None:
            self.send_response(status)
            for key, value in headers.items():
                self.send_header(key, value)
            self.send_header("Content-Length", headers.get("Content-Length", str(len(data))))
            self.end_headers()
            if body and data:
                self.wfile.write(data)

        def _error(self, code: str, status: int = 404, **headers: str) -> None:
            self._send(status, {"X-Error-Code": code, **headers}, f"{code}: {self.path}".encode())

        def _resolve(self, body: bool) -> None:
            match = _RESOLVE.match(self.path.split("?")[0])
            if not match:
                return self._error("RepoNotFound")
            repo = hub.repos.get(unquote(match["repo"]))
            if repo is None:
                return self._error("RepoNotFound")
            revision = unquote(match["revision"])
            commit = repo.refs.get(revision, revision if revision in repo.commits else None)
            if commit is None:
                return self._error("RevisionNotFound")
            files = repo.commits[commit]
            name = unquote(match["file"])
            if name not in files:
                return self._error("EntryNotFound", **{"X-Repo-Commit": commit})
            data = files[name]
            if name in LFS_FILES:
                sha256 = hashlib.sha256(data).hexdigest()
                pointer = f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {len(data)}\n"
                return self._send(302, {"Location": f"{hub.cdn}/cdn/{sha256}", "X-Repo-Commit": commit,
                                        "X-Linked-Etag": f'"{sha256}"', "X-Linked-Size": str(len(data)),
                                        "ETag": f'"{git_blob_sha1(pointer.encode())}"'})
            self._send(200, {"X-Repo-Commit": commit, "ETag": f'"{git_blob_sha1(data)}"'}, data, body)

        def _cdn(self, body: bool) -> None:
            sha256 = self.path.split("?")[0].rsplit("/", 1)[-1]
            data = hub.blobs.get(sha256)
            if data is None:
                return self._error("EntryNotFound")
            if sha256 in hub.corrupt:
                data = data[:-1] + bytes([data[-1] ^ 0xFF])
            start = 0
            ranged = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range", ""))
            if ranged:
                start = int(ranged.group(1))
            part = data[start:]
            headers = {"ETag": f'"{sha256}"', "Accept-Ranges": "bytes"}
            if ranged:
                headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
            if body and sha256 in hub.drop_once:
                hub.drop_once.discard(sha256)
                # Promise the whole file, send half of it, hang up.
                self._send(206 if ranged else 200, {**headers, "Content-Length": str(len(part))}, body=False)
                self.wfile.write(part[: len(part) // 2])
                self.wfile.flush()
                self.close_connection = True
                return
            self._send(206 if ranged else 200, headers, part, body)

    return Handler
