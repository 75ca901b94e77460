"""A local stand-in for the Hugging Face Hub's HTTP API, for testing uploads.

It answers the requests ``datasets.Dataset.push_to_hub`` and ``huggingface_hub.HfApi``'s
``create_repo`` / ``create_commit`` make for a dataset (point ``HF_ENDPOINT`` at
:attr:`HubStandIn.url`), keeps each repository's files in memory and records what it was
sent: the repositories created with their visibility, every request and its
``Authorization`` header, each commit's files (decoded bytes) and deletions.

At pre-upload a Parquet file is answered upload mode "lfs", as the Hub's ``.gitattributes``
does (``push_to_hub`` deletes its temporary shard once pre-uploaded, so it must go up
then); the LFS batch endpoint answers the "basic" transfer, one ``PUT`` of the object to the
stand-in, checked against its sha256. Other files are "regular": their bytes come
base64-encoded inside the commit. The client must use LFS, not Xet: run it with
``HF_HUB_DISABLE_XET=1``. A request it does not know gets a 404 and is listed in
:attr:`HubStandIn.unknown`, so a failing test says which endpoint is missing.

``fail={"commit": (500, b"...")}`` answers every request to an endpoint (a name in
:data:`ROUTES`: ``repo_info``, ``create``, ``preupload``, ``lfs_batch``, ``commit``,
``tree``...) with that status and body instead.

Use: ``with HubStandIn() as hub:`` run the upload with ``HF_ENDPOINT=hub.url`` (in a fresh
process: ``huggingface_hub`` reads it when imported), then read ``hub.repos["me/name"]``.
"""
from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import yaml

LFS_SUFFIXES = (".parquet", ".arrow", ".bin", ".safetensors")
_REPO = r"(?P<repo>[\w.-]+/[\w.-]+)"
ROUTES: list[tuple[str, str, re.Pattern[str]]] = [
    ("GET", "whoami", re.compile(r"/api/whoami-v2")),
    ("GET", "agent_harnesses", re.compile(r"/api/agent-harnesses")),
    ("POST", "create", re.compile(r"/api/repos/create")),
    ("POST", "validate_yaml", re.compile(r"/api/validate-yaml")),
    ("POST", "preupload", re.compile(rf"/api/datasets/{_REPO}/preupload/(?P<rev>[^/]+)")),
    ("POST", "commit", re.compile(rf"/api/datasets/{_REPO}/commit/(?P<rev>[^/]+)")),
    ("POST", "paths_info", re.compile(rf"/api/datasets/{_REPO}/paths-info/(?P<rev>[^/]+)")),
    ("GET", "tree", re.compile(rf"/api/datasets/{_REPO}/tree/(?P<rev>[^/]+)(?:/(?P<path>.*))?")),
    ("GET", "repo_info", re.compile(rf"/api/datasets/{_REPO}(?:/revision/(?P<rev>[^/]+))?")),
    ("POST", "lfs_batch", re.compile(rf"/datasets/{_REPO}\.git/info/lfs/objects/batch")),
    ("PUT", "lfs_upload", re.compile(r"/lfs-upload/(?P<oid>[0-9a-f]{64})")),
    ("GET", "resolve", re.compile(rf"/datasets/{_REPO}/resolve/(?P<rev>[^/]+)/(?P<path>.+)")),
    ("HEAD", "resolve", re.compile(rf"/datasets/{_REPO}/resolve/(?P<rev>[^/]+)/(?P<path>.+)")),
]


@dataclass
class Commit:
    """One commit as received: its summary, parent, added files (decoded) and deletions."""

    summary: str
    parent: str | None
    files: dict[str, bytes] = field(default_factory=dict)
    deleted: list[str] = field(default_factory=list)


@dataclass
class Repo:
    """A dataset repository: its visibility, current files and commit history."""

    repo_id: str
    private: bool
    files: dict[str, bytes] = field(default_factory=dict)
    commits: list[Commit] = field(default_factory=list)

    @property
    def sha(self) -> str:
        return hashlib.sha1(f"{self.repo_id}:{len(self.commits)}".encode()).hexdigest()


class HubStandIn:
    """The stand-in server, on 127.0.0.1 in a thread; use it as a context manager."""

    def __init__(self, fail: dict[str, tuple[int, bytes]] | None = None) -> None:
        self.fail = dict(fail or {})
        self.repos: dict[str, Repo] = {}
        self.authorizations: list[str] = []  # every request's Authorization header ("" if none)
        self.requests: list[str] = []  # "METHOD /path" in order
        self.unknown: list[str] = []
        self.lfs_objects: dict[str, bytes] = {}  # sha256 -> bytes, as uploaded
        self.lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> HubStandIn:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    # -- what the endpoints do -------------------------------------------------------------

    def _entry(self, repo: Repo, path: str) -> dict[str, Any] | None:
        if path in repo.files:
            data = repo.files[path]
            return {"type": "file", "path": path, "size": len(data),
                    "oid": hashlib.sha1(data).hexdigest()}
        if any(p.startswith(path + "/") for p in repo.files):
            return {"type": "directory", "path": path,
                    "oid": hashlib.sha1(path.encode()).hexdigest()}
        return None

    def _tree(self, repo: Repo, path: str, recursive: bool) -> list[dict[str, Any]]:
        prefix = f"{path}/" if path else ""
        names: set[str] = set()
        for p in repo.files:
            if not p.startswith(prefix):
                continue
            parts = p[len(prefix):].split("/")
            steps = range(1, len(parts) + 1) if recursive else [1]
            names.update(prefix + "/".join(parts[:n]) for n in steps)
        return [e for name in sorted(names) if (e := self._entry(repo, name)) is not None]

    def handle(self, method: str, path: str, query: dict[str, list[str]], body: bytes
               ) -> tuple[int, dict[str, str], bytes]:
        """The status, headers and body answering one request."""
        route = next(((name, m) for verb, name, pattern in ROUTES
                      if verb == method and (m := pattern.fullmatch(path))), None)
        if route is None:
            self.unknown.append(f"{method} {path}")
            return 404, {}, f"hub stand-in: no endpoint for {method} {path}".encode()
        name, m = route
        if name in self.fail:
            status, text = self.fail[name]
            return status, {"Content-Type": "application/json"}, text
        args = {k: unquote(v) for k, v in m.groupdict().items() if v is not None}
        if name == "whoami":
            return _json({"type": "user", "name": "me", "orgs": [],
                          "auth": {"type": "access_token",
                                   "accessToken": {"role": "write", "displayName": "test"}}})
        if name == "agent_harnesses":  # the client's telemetry registry: an empty one
            return _json({"standardEnvVars": [], "harnesses": {}})
        if name == "validate_yaml":  # a card's front matter must be a YAML mapping
            return _validate_card(json.loads(body)["content"])
        if name == "lfs_upload":  # the bytes of an LFS object, checked against its sha256
            oid = args["oid"]
            if hashlib.sha256(body).hexdigest() != oid:
                return 400, {}, b'{"error": "content does not match its oid"}'
            self.lfs_objects[oid] = body
            return 200, {}, b""
        if name == "create":
            req = json.loads(body)
            repo_id = f"{req.get('organization') or 'me'}/{req['name']}"
            if req.get("type") != "dataset":
                return 400, {}, b'{"error": "the stand-in holds datasets only"}'
            if repo_id in self.repos:
                return 409, {}, b'{"error": "You already created this dataset repo"}'
            private = req.get("private", req.get("visibility") == "private")
            self.repos[repo_id] = Repo(repo_id, private=bool(private))
            return _json({"url": f"{self.url}/datasets/{repo_id}", "name": repo_id})
        repo = self.repos.get(args["repo"])
        if repo is None:
            return 404, {"X-Error-Code": "RepoNotFound"}, b'{"error": "Repository not found"}'
        if name == "repo_info":
            return _json({"id": repo.repo_id, "sha": repo.sha, "private": repo.private,
                          "siblings": [{"rfilename": p, "size": len(b)}
                                       for p, b in sorted(repo.files.items())]})
        if name == "preupload":  # Parquet goes to LFS, as the Hub's .gitattributes says
            files = json.loads(body)["files"]
            return _json({"files": [{"path": f["path"], "shouldIgnore": False,
                                     "uploadMode": "lfs" if f["path"].endswith(LFS_SUFFIXES)
                                     else "regular"} for f in files]})
        if name == "lfs_batch":  # basic transfer: one PUT of the whole object to the stand-in
            req = json.loads(body)
            return _json({"transfer": "basic", "objects": [
                {"oid": o["oid"], "size": o["size"], "authenticated": True,
                 **({} if o["oid"] in self.lfs_objects else
                    {"actions": {"upload": {"href": f"{self.url}/lfs-upload/{o['oid']}"}}})}
                for o in req["objects"]]})
        if name == "commit":
            return self._commit(repo, body)
        if name == "tree":
            folder = args.get("path", "").strip("/")
            if folder and (self._entry(repo, folder) or {}).get("type") != "directory":
                return _entry_not_found()
            recursive = query.get("recursive", ["False"])[0].lower() == "true"
            return _json(self._tree(repo, folder, recursive))
        if name == "paths_info":
            form = parse_qs(body.decode())
            return _json([e for p in form.get("paths", []) if (e := self._entry(repo, p))])
        # resolve: a file's bytes
        data = repo.files.get(args["path"])
        if data is None:
            return _entry_not_found()
        return 200, {"X-Repo-Commit": repo.sha, "ETag": f'"{hashlib.sha1(data).hexdigest()}"',
                     "Content-Type": "application/octet-stream"}, data

    def _commit(self, repo: Repo, body: bytes) -> tuple[int, dict[str, str], bytes]:
        lines = [json.loads(line) for line in body.splitlines() if line.strip()]
        header = next((item["value"] for item in lines if item["key"] == "header"), {})
        commit = Commit(summary=header.get("summary", ""), parent=header.get("parentCommit"))
        if commit.parent not in (None, repo.sha):
            return 412, {}, b'{"error": "parent commit is not the head"}'
        for item in lines:
            key, value = item["key"], item["value"]
            if key == "file" and value.get("encoding") == "base64":
                commit.files[value["path"]] = base64.b64decode(value["content"])
            elif key == "lfsFile":
                data = self.lfs_objects.get(value.get("oid", ""))
                if data is None or value.get("algo") != "sha256":
                    return 400, {}, f'{{"error": "no LFS object for {value["path"]}"}}'.encode()
                commit.files[value["path"]] = data
            elif key in ("deletedFile", "deletedFolder"):
                commit.deleted.append(value["path"])
            elif key != "header":
                return 400, {}, f'{{"error": "the stand-in does not take {key}"}}'.encode()
        for path in commit.deleted:
            repo.files = {p: b for p, b in repo.files.items()
                          if p != path and not p.startswith(path.rstrip("/") + "/")}
        repo.files.update(commit.files)
        repo.commits.append(commit)
        return _json({"commitUrl": f"{self.url}/datasets/{repo.repo_id}/commit/{repo.sha}",
                      "commitOid": repo.sha, "pullRequestUrl": None})

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _serve(self) -> None:
                url = urlsplit(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                with hub.lock:
                    hub.requests.append(f"{self.command} {url.path}")
                    hub.authorizations.append(self.headers.get("Authorization", ""))
                    try:
                        status, headers, data = hub.handle(self.command, url.path,
                                                           parse_qs(url.query), body)
                    except Exception as e:  # a malformed request: say so, as the Hub would
                        status, headers, data = 400, {}, f"hub stand-in: {e!r}".encode()
                self.send_response(status)
                for key, value in {"Content-Type": "application/json", **headers}.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            do_GET = do_POST = do_HEAD = do_PUT = do_DELETE = _serve

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler


def _json(value: Any) -> tuple[int, dict[str, str], bytes]:
    return 200, {"Content-Type": "application/json"}, json.dumps(value).encode()


def _entry_not_found() -> tuple[int, dict[str, str], bytes]:
    return 404, {"X-Error-Code": "EntryNotFound"}, b'{"error": "Entry not found"}'


def _validate_card(content: str) -> tuple[int, dict[str, str], bytes]:
    """As the Hub's ``validate-yaml``: 400 with the errors when the front matter is not a
    YAML mapping."""
    m = re.match(r"---\n(.*?)\n---\n", content, re.S)
    try:
        meta = yaml.safe_load(m.group(1)) if m else {}
    except yaml.YAMLError as e:
        meta = e
    if not isinstance(meta, dict):
        return 400, {}, json.dumps({"errors": [{"message": f"invalid metadata: {meta}"}]}).encode()
    return _json({"errors": [], "warnings": []})
