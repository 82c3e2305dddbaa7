"""A stand-in for the Hugging Face Hub on 127.0.0.1, for testing `stchat pull` without a network.

It answers the endpoints huggingface_hub 2.4.0 calls (`/work/shared/notes/huggingface_hub.md`):
repository info with file metadata (`/api/models/{repo}[/revision/{rev}]?blobs=true`), tree
listings, `paths-info`, and `HEAD`/`GET /{repo}/resolve/{rev}/{path}` with the Hub's headers
(`X-Repo-Commit`, `X-Linked-Etag`, `X-Linked-Size`, `ETag`). Large (LFS) files are redirected
to `/cdn/{sha256}` as the real Hub redirects to its CDN; both honour `Range` with 206. Errors
carry `X-Error-Code` (unknown repositories get 401 like the real Hub; gated ones `GatedRepo`
unless the request carries `GRANTED_TOKEN`).

A renamed repository (`renames[old] = new`, as PowerInfer/... became Tiiny/...) answers its old
name with `307` to the same URL under the new name, for the API and for `resolve`, as the Hub does.

Tests script failures per file with `faults[path] = [("cut", n), ("drop",), ...]`: each content
request takes the next fault (send n bytes then close the connection; close without answering;
`("corrupt",)`: flip a byte). `throttle` limits the content rate. Every request is logged with
its method, path, Range header, status and body bytes sent, so tests can assert what was fetched.
"""
from __future__ import annotations

import hashlib
import json
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, quote, unquote, urlsplit

LFS_SUFFIXES = (".gguf", ".safetensors", ".bin")
GRANTED_TOKEN = "hf_granted"   # the one token that may download gated repositories


@dataclass
class Served:
    content: bytes
    lfs: bool

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.content).hexdigest()

    @property
    def git_oid(self) -> str:
        if self.lfs:  # the git blob of an LFS file is its pointer; any stable id does here
            return hashlib.sha1(b"pointer " + self.sha256.encode()).hexdigest()
        return hashlib.sha1(b"blob %d\0" % len(self.content) + self.content).hexdigest()


@dataclass
class Repo:
    repo_id: str
    files: dict[str, Served]
    commit: str
    gated: bool = False


@dataclass
class Logged:
    method: str
    path: str
    range: str | None
    status: int
    sent: int = 0
    file: str | None = None
    auth: str | None = None


@dataclass
class HubState:
    repos: dict[str, Repo] = field(default_factory=dict)
    log: list[Logged] = field(default_factory=list)
    faults: dict[str, list[tuple]] = field(default_factory=dict)
    throttle: int | None = None          # bytes per second for file content
    renames: dict[str, str] = field(default_factory=dict)   # old repository id -> current one
    lock: threading.Lock = field(default_factory=threading.Lock)


class HubServer:
    def __init__(self):
        self.state = HubState()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.httpd.daemon_threads = True
        self.httpd.state = self.state
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def add_repo(self, repo_id: str, files: dict[str, bytes], gated: bool = False) -> Repo:
        served = {path: Served(data, path.endswith(LFS_SUFFIXES) or path == "tokenizer.json")
                  for path, data in files.items()}
        commit = hashlib.sha1(repo_id.encode() + b"".join(s.sha256.encode() for s in served.values())).hexdigest()
        repo = Repo(repo_id, served, commit, gated)
        self.state.repos[repo_id] = repo
        return repo

    @property
    def log(self) -> list[Logged]:
        with self.state.lock:
            return list(self.state.log)

    def clear_log(self) -> None:
        with self.state.lock:
            self.state.log.clear()

    def content_requests(self, file: str | None = None) -> list[Logged]:
        """GETs that carried file bytes (resolve of small files, or the CDN)."""
        return [e for e in self.log if e.method == "GET" and e.file is not None and (file is None or e.file == file)]

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:  # quiet
        pass

    @property
    def state(self) -> HubState:
        return self.server.state

    def _record(self, status: int, sent: int = 0, file: str | None = None) -> None:
        with self.state.lock:
            self.state.log.append(Logged(self.command, self.path, self.headers.get("Range"), status, sent, file,
                                         self.headers.get("Authorization")))

    def _send(self, status: int, body: bytes = b"", headers: dict | None = None, file: str | None = None) -> None:
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, str(value))
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
        self._record(status, len(body) if self.command != "HEAD" else 0, file)

    def _json(self, data, status: int = 200) -> None:
        self._send(status, json.dumps(data).encode(), {"Content-Type": "application/json"})

    def _error(self, status: int, code: str, message: str = "") -> None:
        self._send(status, json.dumps({"error": message or code}).encode(),
                   {"X-Error-Code": code, "X-Error-Message": message or code, "Content-Type": "application/json"})

    def _repo(self, repo_id: str) -> Repo | None:
        repo = self.state.repos.get(repo_id)
        if repo is None:
            self._error(401, "RepoNotFound", "Repository not found")
        return repo

    # -- routing ------------------------------------------------------------------------
    def do_HEAD(self):
        self._route()

    def do_GET(self):
        self._route()

    def do_POST(self):
        self._route()

    def _route(self) -> None:
        url = urlsplit(self.path)
        parts = [unquote(p) for p in url.path.split("/") if p]
        at = 2 if parts[:2] == ["api", "models"] else 0     # where the repository id starts
        renamed = self.state.renames.get("/".join(parts[at:at + 2]))
        if renamed and len(parts) >= at + 2:
            raw = [p for p in url.path.split("/") if p]
            moved = "/".join(raw[:at] + [quote(p) for p in renamed.split("/")] + raw[at + 2:])
            return self._send(307, b"", {"Location": "/" + moved + (f"?{url.query}" if url.query else "")})
        if parts[:2] == ["api", "models"] and len(parts) >= 4:
            return self._api(parts[2] + "/" + parts[3], parts[4:], parse_qs(url.query))
        if parts[:1] == ["cdn"] and len(parts) == 2:
            for repo in self.state.repos.values():
                for path, served in repo.files.items():
                    if served.sha256 == parts[1]:
                        return self._content(path, served, {})
            return self._error(404, "EntryNotFound")
        if len(parts) >= 5 and parts[2] == "resolve":
            return self._resolve(parts[0] + "/" + parts[1], parts[3], "/".join(parts[4:]))
        self._error(404, "NotFound")

    def _api(self, repo_id: str, rest: list[str], query: dict) -> None:
        repo = self._repo(repo_id)
        if repo is None:
            return
        if rest[:1] == ["revision"] and rest[1:] and rest[1] not in ("main", repo.commit):
            return self._error(404, "RevisionNotFound")
        if not rest or rest[:1] == ["revision"]:
            siblings = [{"rfilename": path, "size": len(s.content), "blobId": s.git_oid,
                         **({"lfs": {"sha256": s.sha256, "size": len(s.content), "pointerSize": 134}} if s.lfs else {})}
                        for path, s in sorted(repo.files.items())]
            return self._json({"_id": repo.commit[:24], "id": repo.repo_id, "modelId": repo.repo_id,
                               "sha": repo.commit, "private": False, "disabled": False,
                               "gated": "manual" if repo.gated else False, "downloads": 0, "likes": 0,
                               "tags": ["gguf"], "siblings": siblings,
                               "lastModified": "2025-07-25T00:00:00.000Z", "createdAt": "2025-07-25T00:00:00.000Z"})
        if rest[0] in ("tree", "paths-info"):
            if rest[0] == "tree":
                prefix = "/".join(rest[2:])
                paths = [p for p in sorted(repo.files) if not prefix or p.startswith(prefix + "/")]
            else:
                length = int(self.headers.get("Content-Length") or 0)
                paths = [p for p in parse_qs(self.rfile.read(length).decode()).get("paths", []) if p in repo.files]
            entries = []
            for path in paths:
                s = repo.files[path]
                entry = {"type": "file", "oid": s.git_oid, "size": len(s.content), "path": path}
                if s.lfs:
                    entry["lfs"] = {"oid": s.sha256, "size": len(s.content), "pointerSize": 134}
                entries.append(entry)
            return self._json(entries)
        self._error(404, "NotFound")

    def _resolve(self, repo_id: str, revision: str, path: str) -> None:
        repo = self._repo(repo_id)
        if repo is None:
            return
        if revision not in ("main", repo.commit):
            return self._error(404, "RevisionNotFound")
        served = repo.files.get(path)
        if served is None:
            return self._error(404, "EntryNotFound", "Entry not found")
        if repo.gated and self.headers.get("Authorization") != f"Bearer {GRANTED_TOKEN}":
            return self._error(401, "GatedRepo", "Access to this model is restricted")
        headers = {"X-Repo-Commit": repo.commit, "ETag": f'"{served.git_oid}"'}
        if served.lfs:
            headers.update({"X-Linked-Etag": f'"{served.sha256}"', "X-Linked-Size": len(served.content),
                            "Location": f"/cdn/{served.sha256}"})
            return self._send(302, b"", headers)
        self._content(path, served, headers)

    def _content(self, path: str, served: Served, headers: dict) -> None:
        data = served.content
        with self.state.lock:
            queue = self.state.faults.get(path) or []
            fault = queue.pop(0) if queue else None
        if fault and fault[0] == "drop":
            self._record(0, 0, path)
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        if fault and fault[0] == "corrupt":
            data = data[:-1] + bytes([data[-1] ^ 0xFF])
        start, status = 0, 200
        wanted = self.headers.get("Range")
        if wanted and wanted.startswith("bytes="):
            first, _, last = wanted[6:].partition("-")
            start = int(first)
            end = int(last) + 1 if last else len(data)
            if start >= len(data):
                return self._send(416, b"", {"Content-Range": f"bytes */{len(data)}"})
            data, status = data[start:end], 206
            headers = dict(headers, **{"Content-Range": f"bytes {start}-{start + len(data) - 1}/{len(served.content)}"})
        self.send_response(status)
        for key, value in dict(headers, **{"Accept-Ranges": "bytes", "Content-Length": len(data)}).items():
            self.send_header(key, str(value))
        self.end_headers()
        if self.command == "HEAD":
            return self._record(status, 0, None)
        limit = fault[1] if fault and fault[0] == "cut" else len(data)
        sent = 0
        try:
            while sent < min(limit, len(data)):
                piece = data[sent:min(limit, sent + 16384)]
                self.wfile.write(piece)
                self.wfile.flush()
                sent += len(piece)
                if self.state.throttle:
                    time.sleep(len(piece) / self.state.throttle)
        except (BrokenPipeError, ConnectionResetError):
            pass
        self._record(status, sent, path)
        if sent < len(data):
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


# -- the synthetic models the pull tests serve ---------------------------------------------------
GGUF_4B = "Tiiny/SmallThinker-4BA0.6B-Instruct-GGUF"
GGUF_21B = "Tiiny/SmallThinker-21BA3B-Instruct-GGUF"
HF_4B = "Tiiny/SmallThinker-4BA0.6B-Instruct"
OLD_ORG, NEW_ORG = "PowerInfer", "Tiiny"   # the organisation's old name redirects to the new one
POWERINFER_4B = "SmallThinker-4B-Q4_0.powerinfer.gguf"   # PowerInfer-only fused format: never chosen
PLAIN_4B = "SmallThinker-4B-A0.6B-Instruct-Q4_0.gguf"
PLAIN_21B = "SmallThinker-21B-A3B-Instruct-Q4_0.gguf"
SLOW = "test/SmallThinker-Many-Experts-GGUF"   # converts for ~0.5 s: room to kill it midway
SLOW_FILE = "many-experts-Q4_0.gguf"
GATED = "test/Gated-GGUF"


def serve_synthetic_models(root) -> HubServer:
    """A server holding tiny SmallThinker checkpoints under the real repository names (the old
    PowerInfer/... names redirect to them), next to decoy files the GGUF choice must skip (ARM
    repacks, other quantizations, split files, PowerInfer's own format)."""
    from dataclasses import replace
    from pathlib import Path

    from runtime import synthetic

    root = Path(root)
    gguf_4b = synthetic.write_gguf(synthetic.TINY_4B_LIKE, root / "4b.gguf").read_bytes()
    gguf_21b = synthetic.write_gguf(synthetic.TINY_21B_LIKE, root / "21b.gguf").read_bytes()
    many = replace(synthetic.TINY_4B_LIKE, num_layers=12, num_experts=64, rope_layout=(1,) * 12,
                   sliding_window_layout=(0,) * 12)
    gguf_slow = synthetic.write_gguf(many, root / "slow.gguf").read_bytes()
    hf_dir = synthetic.write_hf_dir(synthetic.TINY_4B_LIKE, root / "hf-4b")
    server = HubServer()
    readme = b"---\nlicense: apache-2.0\n---\n# SmallThinker (synthetic)\n"
    server.add_repo(GGUF_4B, {
        "README.md": readme, ".gitattributes": b"*.gguf filter=lfs diff=lfs merge=lfs -text\n",
        PLAIN_4B: gguf_4b,
        "SmallThinker-4B-A0.6B-Instruct-Q4_0_4_4.gguf": b"arm repack decoy" * 64,
        POWERINFER_4B: b"powerinfer decoy" * 64,
        "SmallThinker-4B-A0.6B-Instruct-Q8_0.gguf": b"q8 decoy" * 64,
        "SmallThinker-4B-A0.6B-Instruct-Q4_0-imatrix.gguf": b"imatrix decoy" * 64,
        "split/SmallThinker-4B-A0.6B-Instruct-Q4_0-00001-of-00002.gguf": b"split decoy" * 64})
    server.add_repo(GGUF_21B, {"README.md": readme, PLAIN_21B: gguf_21b,
                               "SmallThinker-21B-A3B-Instruct-Q4_K_M.gguf": b"k-quant decoy" * 64})
    server.add_repo(HF_4B, {p.name: p.read_bytes() for p in sorted(hf_dir.iterdir())} | {"README.md": readme})
    server.add_repo(SLOW, {SLOW_FILE: gguf_slow})
    server.add_repo(GATED, {"gated-Q4_0.gguf": gguf_4b}, gated=True)
    for repo in (GGUF_4B, GGUF_21B, HF_4B):
        server.state.renames[repo.replace(NEW_ORG, OLD_ORG, 1)] = repo
    return server
