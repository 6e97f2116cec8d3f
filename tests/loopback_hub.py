"""A stand-in for the Hugging Face Hub on 127.0.0.1, for the hf:// tests: the REST endpoints that
``huggingface_hub``'s HfFileSystem and HfApi call to read a dataset repository and to commit to
one, answered as the Hub answers them (read from huggingface_hub's own client code), over a
repository kept in memory.

Reading: ``api/datasets/{repo}[/revision/{rev}]`` (repository info), ``.../tree/{rev}/{path}``
(listings), ``.../paths-info/{rev}`` (file info), ``datasets/{repo}/resolve/{rev}/{path}``
(downloads, byte ranges). Writing: ``api/repos/create``, ``api/validate-yaml`` (the card's
header), ``.../preupload/{rev}`` (regular or LFS: tars and large files are LFS, as the Hub's
default .gitattributes says), the LFS batch API and a PUT per object (the "basic" transfer, the
one huggingface_hub uses when Xet is off: HF_HUB_DISABLE_XET=1), and ``.../commit/{rev}``
(ndjson operations), each commit recorded with the paths it added in order.

Tokens: ``READ_TOKEN`` may read, ``WRITE_TOKEN`` may also write; no token reads public
repositories only. As on the Hub, an unknown token is a 401 on any request, a repository that
does not exist or that the caller may not see is a 401 (no token) or a 404, and a write without
write access a 403.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import http.server
import json
import re
import threading
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

READ_TOKEN = "hf_loopback_read"
WRITE_TOKEN = "hf_loopback_write"
_LFS_POINTER_SIZE = 134


@dataclass
class Blob:
    data: bytes
    lfs: bool

    def entry(self, path: str) -> dict:
        """The Hub's description of a file in a listing or paths-info answer."""
        git = hashlib.sha1(b"blob %d\0" % len(self.data) + self.data).hexdigest()
        entry = {"type": "file", "oid": git, "size": len(self.data), "path": path}
        if self.lfs:
            sha256 = hashlib.sha256(self.data).hexdigest()
            entry["lfs"] = {"oid": sha256, "size": len(self.data), "pointerSize": _LFS_POINTER_SIZE}
        return entry


@dataclass
class Commit:
    oid: str
    message: str
    added: list[str]  # paths, in the order of the commit's operations
    files: dict[str, Blob]  # the repository's files after it


@dataclass
class Repository:
    private: bool = False
    commits: list[Commit] = field(default_factory=list)

    def snapshot(self, revision: str) -> dict[str, Blob] | None:
        if revision == "main":
            return self.commits[-1].files if self.commits else {}
        found = [commit for commit in self.commits if commit.oid == revision]
        return found[0].files if found else None


class HubState:
    """Everything the stand-in holds and saw; tests read and change it."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.repos: dict[str, Repository] = {}
        self.lfs_objects: dict[str, bytes] = {}
        self.requests: list[tuple[str, str]] = []  # (method, path without query)
        self.failing_commits = 0  # how many more commits to answer with a 500

    def add_folder(self, repo_id: str, folder: Path, private: bool = False) -> None:
        """A repository whose one commit holds every file of ``folder`` (tars as LFS files)."""
        files = {
            path.relative_to(folder).as_posix(): Blob(path.read_bytes(), path.suffix == ".tar")
            for path in sorted(folder.rglob("*"))
            if path.is_file()
        }
        repo = Repository(private=private)
        repo.commits.append(
            Commit(_oid("initial", repo_id), "initial commit", sorted(files), files)
        )
        self.repos[repo_id] = repo

    def commits(self, repo_id: str) -> list[Commit]:
        return self.repos[repo_id].commits


def _oid(*parts: object) -> str:
    return hashlib.sha1(json.dumps([str(part) for part in parts]).encode()).hexdigest()


_REPO = r"(?P<repo>[^/]+/[^/]+)"
_ROUTES = [
    ("GET", rf"/api/datasets/{_REPO}(?:/revision/(?P<rev>[^/]+))?", "info"),
    ("GET", rf"/api/datasets/{_REPO}/tree/(?P<rev>[^/]+)(?:/(?P<path>.*))?", "tree"),
    ("POST", rf"/api/datasets/{_REPO}/paths-info/(?P<rev>[^/]+)", "paths_info"),
    ("GET", rf"/datasets/{_REPO}/resolve/(?P<rev>[^/]+)/(?P<path>.+)", "resolve"),
    ("HEAD", rf"/datasets/{_REPO}/resolve/(?P<rev>[^/]+)/(?P<path>.+)", "resolve"),
    ("POST", r"/api/repos/create", "create"),
    ("POST", r"/api/validate-yaml", "validate_yaml"),
    ("POST", rf"/api/datasets/{_REPO}/preupload/(?P<rev>[^/]+)", "preupload"),
    ("POST", rf"/datasets/{_REPO}\.git/info/lfs/objects/batch", "lfs_batch"),
    ("PUT", r"/lfs/(?P<oid>[0-9a-f]{64})", "lfs_put"),
    ("POST", rf"/api/datasets/{_REPO}/commit/(?P<rev>[^/]+)", "commit"),
]


class HubError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None, **extra) -> None:
        super().__init__(message)
        self.status, self.message, self.code, self.extra = status, message, code, extra


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the Hub; every answer has a Content-Length
    server: LoopbackHub

    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_HEAD(self) -> None:
        self._dispatch("HEAD")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def _dispatch(self, method: str) -> None:
        url = urllib.parse.urlsplit(self.path)
        state = self.server.state
        with state.lock:
            state.requests.append((method, url.path))
        body = self._body()
        try:
            for verb, pattern, name in _ROUTES:
                match = re.fullmatch(pattern, url.path)
                if verb == method and match:
                    groups = {
                        k: urllib.parse.unquote(v or "") for k, v in match.groupdict().items()
                    }
                    query = urllib.parse.parse_qs(url.query)
                    with state.lock:
                        status, headers, payload = getattr(self, name)(body, query, **groups)
                    self._answer(status, headers, payload, method == "HEAD")
                    return
            raise HubError(404, f"no route for {method} {url.path}")
        except HubError as error:
            headers = {"X-Error-Message": error.message}
            if error.code:
                headers["X-Error-Code"] = error.code
            payload = {"error": error.message, **error.extra}
            self._answer(error.status, headers, payload, method == "HEAD")

    def _body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", ""):
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0], 16)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
                if size == 0:
                    return b"".join(chunks)
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _answer(self, status: int, headers: dict, payload: object, head: bool) -> None:
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        self.send_response(status)
        if not isinstance(payload, bytes):
            self.send_header("Content-Type", "application/json")
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if not head:
            self.wfile.write(data)

    # --- who may do what ---

    def _token(self) -> str | None:
        """The caller's token, None without one; an unknown one is a 401 whatever was asked."""
        given = self.headers.get("Authorization", "")
        if not given:
            return None
        token = given.removeprefix("Bearer ")
        if token not in (READ_TOKEN, WRITE_TOKEN):
            raise HubError(401, "Invalid credentials in Authorization header")
        return token

    def _readable(self, repo_id: str) -> Repository:
        token = self._token()
        repo = self.server.state.repos.get(repo_id)
        if repo is None or (repo.private and token is None):
            status = 401 if token is None else 404
            raise HubError(status, "Repository not found", "RepoNotFound")
        return repo

    def _writable(self, repo_id: str) -> Repository:
        repo = self._readable(repo_id)
        if self._token() is None:
            raise HubError(401, "You must be authenticated to write to this repository")
        if self._token() != WRITE_TOKEN:
            raise HubError(403, "You don't have the rights to write to this repository")
        return repo

    def _files(self, repo: Repository, revision: str) -> dict[str, Blob]:
        files = repo.snapshot(revision)
        if files is None:
            raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        return files

    # --- reading ---

    def info(self, body, query, repo, rev):
        found = self._readable(repo)
        files = self._files(found, rev or "main")
        head = found.commits[-1].oid if found.commits else _oid("empty", repo)
        sha = rev if rev and rev != "main" else head
        siblings = [{"rfilename": path} for path in sorted(files)]
        return 200, {}, {"id": repo, "sha": sha, "private": found.private, "siblings": siblings}

    def tree(self, body, query, repo, rev, path):
        files = self._files(self._readable(repo), rev)
        recursive = query.get("recursive", ["False"])[0].lower() == "true"
        prefix = f"{path.rstrip('/')}/" if path else ""
        below = sorted(name for name in files if name.startswith(prefix))
        if path and not below:
            raise HubError(404, f"{path} does not exist", "EntryNotFound")
        entries, folders = [], set()
        for name in below:
            parts = name[len(prefix) :].split("/")
            for depth in range(1, len(parts)):
                if recursive or depth == 1:
                    folders.add(prefix + "/".join(parts[:depth]))
            if recursive or len(parts) == 1:
                entries.append(files[name].entry(name))
        entries += [{"type": "directory", "oid": _oid(f), "path": f} for f in sorted(folders)]
        return 200, {}, entries

    def paths_info(self, body, query, repo, rev):
        files = self._files(self._readable(repo), rev)
        asked = urllib.parse.parse_qs(body.decode()).get("paths", [])
        found = []
        for path in asked:
            if path in files:
                found.append(files[path].entry(path))
            elif any(name.startswith(path.rstrip("/") + "/") for name in files):
                found.append({"type": "directory", "oid": _oid(path), "path": path})
        return 200, {}, found

    def resolve(self, body, query, repo, rev, path):
        files = self._files(self._readable(repo), rev)
        if path not in files:
            raise HubError(404, "Entry not found", "EntryNotFound")
        data = files[path].data
        headers = {"ETag": f'"{files[path].entry(path)["oid"]}"', "Accept-Ranges": "bytes"}
        wanted = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
        if not wanted:
            return 200, headers, data
        start = int(wanted[1])
        end = min(int(wanted[2]) if wanted[2] else len(data) - 1, len(data) - 1)
        if start >= len(data):
            return 416, {"Content-Range": f"bytes */{len(data)}"}, b""
        headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
        return 206, headers, data[start : end + 1]

    # --- writing ---

    def create(self, body, query):
        if self._token() != WRITE_TOKEN:
            raise HubError(401 if self._token() is None else 403, "You may not create a repo")
        asked = json.loads(body)
        repo_id = f"{asked['organization']}/{asked['name']}"
        if asked.get("type") != "dataset":
            raise HubError(400, "this stand-in holds dataset repositories only")
        url = f"{self.server.url}/datasets/{repo_id}"
        if repo_id in self.server.state.repos:
            raise HubError(409, "You already created this dataset repo", url=url)
        private = asked.get("visibility") == "private" or bool(asked.get("private"))
        self.server.state.repos[repo_id] = Repository(private=private)
        return 200, {}, {"url": url, "name": repo_id}

    def validate_yaml(self, body, query):
        import yaml

        content = json.loads(body)["content"]
        header = content.split("---\n")[1] if content.startswith("---\n") else ""
        try:
            yaml.safe_load(header)
        except yaml.YAMLError as error:
            return 400, {}, {"errors": [{"message": str(error)}], "warnings": []}
        return 200, {}, {"errors": [], "warnings": []}

    def preupload(self, body, query, repo, rev):
        files = self._files(self._writable(repo), rev)
        answers = []
        for asked in json.loads(body)["files"]:
            path = asked["path"]
            large = asked["size"] > 10 << 20 or path.endswith(".tar")
            existing = None  # the Hub's "oid": an LFS file's sha256, a regular file's git oid
            if path in files:
                entry = files[path].entry(path)
                existing = entry["lfs"]["oid"] if "lfs" in entry else entry["oid"]
            mode = "lfs" if large else "regular"
            answers.append(
                {"path": path, "uploadMode": mode, "shouldIgnore": False, "oid": existing}
            )
        return 200, {}, {"files": answers, "commitOid": _oid(rev)}

    def lfs_batch(self, body, query, repo):
        self._writable(repo)
        asked = json.loads(body)
        objects = []
        for item in asked["objects"]:
            answer = {"oid": item["oid"], "size": item["size"], "authenticated": True}
            if item["oid"] not in self.server.state.lfs_objects:
                href = f"{self.server.url}/lfs/{item['oid']}"
                answer["actions"] = {"upload": {"href": href, "header": {}}}
            objects.append(answer)
        return 200, {}, {"transfer": "basic", "objects": objects}

    def lfs_put(self, body, query, oid):
        if hashlib.sha256(body).hexdigest() != oid:
            raise HubError(400, "the uploaded object does not hash to its oid")
        self.server.state.lfs_objects[oid] = body
        return 200, {}, b""

    def commit(self, body, query, repo, rev):
        found = self._writable(repo)
        if self.server.state.failing_commits > 0:
            self.server.state.failing_commits -= 1
            raise HubError(
                500, "Internal Error - We're working hard to fix this as soon as possible!"
            )
        files = dict(self._files(found, rev))
        lines = [json.loads(line) for line in body.splitlines() if line.strip()]
        header, operations = lines[0], lines[1:]
        added = []
        for operation in operations:
            value = operation["value"]
            if operation["key"] == "file":
                files[value["path"]] = Blob(base64.b64decode(value["content"]), lfs=False)
            elif operation["key"] == "lfsFile":
                data = self.server.state.lfs_objects.get(value["oid"])
                if data is None:
                    raise HubError(422, f"LFS object {value['oid']} was never uploaded")
                files[value["path"]] = Blob(data, lfs=True)
            elif operation["key"] == "deletedFile":
                files.pop(value["path"], None)
                continue
            else:
                raise HubError(400, f"unsupported operation {operation['key']}")
            added.append(value["path"])
        oid = _oid(repo, len(found.commits), header["value"]["summary"], added)
        found.commits.append(Commit(oid, header["value"]["summary"], added, files))
        url = f"{self.server.url}/datasets/{repo}/commit/{oid}"
        return 200, {}, {"commitUrl": url, "commitOid": oid, "pullRequestUrl": None}


class LoopbackHub(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.state = HubState()
        self.url = f"http://127.0.0.1:{self.server_address[1]}"

    def environment(self, token: str | None = READ_TOKEN) -> dict[str, str]:
        """Variables that point huggingface_hub at this stand-in (a command's environment):
        its endpoint, the token (none: HF_TOKEN empty), no Xet, no cache or token of the
        user's."""
        return {
            "HF_ENDPOINT": self.url,
            "HF_TOKEN": token or "",
            "HF_HUB_DISABLE_XET": "1",
            "HF_HUB_DISABLE_TELEMETRY": "1",
            "HF_HUB_DISABLE_IMPLICIT_TOKEN": "1" if token is None else "",
        }


@contextlib.contextmanager
def hub_server() -> Iterator[LoopbackHub]:
    server = LoopbackHub()
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
