"""A small loopback HTTP server that speaks the parts of the Hugging Face Hub protocol huggingface_hub 2.4 uses.

Upload (push a folder): create repo, validate README YAML, preupload (answering "regular" so no LFS/xet upload
happens), commit as NDJSON with base64 files. Download (``hf_hub_download``, hence every Hub name ``load_clip``
takes): ``HEAD``/``GET /{repo}/resolve/{revision}/{path}`` answering ``X-Repo-Commit``, ``ETag`` and
``Content-Length``, or 404 with ``X-Error-Code`` ``RepoNotFound`` / ``RevisionNotFound`` / ``EntryNotFound``;
plus ``/api/models/{repo}[/revision/{revision}]``. Revisions are branches, tags or commit ids; every commit keeps
its own snapshot of the files. A ``Range: bytes=N-`` GET (how huggingface_hub resumes) gets the rest of the file
(206). Faults on request: ``unavailable`` answers file requests with 503; ``cut`` sends a file's headers (the whole
length promised) and only ``cut_keep`` of its bytes, then closes the connection, as a dropped download does.

Writes and private repos need ``Authorization: Bearer <token>``; public repos can be read without one, and a wrong
token is refused everywhere. Requests and stored files are kept for assertions.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import re
import threading
import urllib.parse
from dataclasses import dataclass, field
from http.server import ThreadingHTTPServer

import yaml

from negation_plugins.testing.loopback import LoopbackHandler

REPO = r"(?P<repo>[\w.-]+/[\w.-]+)"
KIND = r"(?P<kind>models|spaces)"  # a Space is stored under "spaces/ORG/NAME", apart from a model of that name
ROUTES = [
    ("POST", re.compile(r"^/api/repos/create$"), "create_repo"),
    ("POST", re.compile(r"^/api/validate-yaml$"), "validate_yaml"),
    (
        "POST",
        re.compile(rf"^/api/{KIND}/{REPO}/preupload/(?P<rev>[^/]+)$"),
        "preupload",
    ),
    ("POST", re.compile(rf"^/api/{KIND}/{REPO}/commit/(?P<rev>[^/]+)$"), "commit"),
    (
        "GET",
        re.compile(rf"^/api/models/{REPO}(/revision/(?P<rev>[^/]+))?$"),
        "model_info",
    ),
    ("GET", re.compile(rf"^/{REPO}/resolve/(?P<rev>[^/]+)/(?P<path>.+)$"), "resolve"),
]


@dataclass
class Repo:
    private: bool
    commits: list[dict] = field(default_factory=list)
    snapshots: dict[str, dict[str, bytes]] = field(default_factory=dict)  # commit oid -> files at that commit
    refs: dict[str, str] = field(default_factory=dict)  # branch or tag -> commit oid

    @property
    def sha(self) -> str:
        return self.refs.get("main", "0" * 40)

    @property
    def files(self) -> dict[str, bytes]:
        return self.snapshots.get(self.sha, {})

    def resolve(self, revision: str) -> str | None:
        """The commit oid a branch, tag or (full) commit id names; None if none."""
        revision = urllib.parse.unquote(revision)
        if revision in self.refs:
            return self.refs[revision]
        return revision if revision in self.snapshots else None

    def add_commit(self, changes: dict[str, bytes | None], summary: str) -> str:
        """Commit ``changes`` (None deletes a path) on main; return the new commit oid."""
        files = dict(self.files)
        for path, content in changes.items():
            if content is None:
                files.pop(path, None)
            else:
                files[path] = content
        digest = hashlib.sha1(f"{self.sha} {len(self.commits)} {summary}".encode())
        for path, content in sorted(files.items()):
            digest.update(path.encode() + b"\0" + content)
        oid = digest.hexdigest()
        self.snapshots[oid] = files
        self.refs["main"] = oid
        self.commits.append({"oid": oid, "summary": summary, "paths": sorted(changes)})
        return oid


class HubState:
    def __init__(self, token: str, user: str = "tester"):
        self.token = token
        self.user = user
        self.repos: dict[str, Repo] = {}
        self.requests: list[dict] = []  # method, path, body bytes, headers
        self.lock = threading.Lock()
        self.unavailable = 0  # answer this many more file requests with 503, as an overloaded Hub does
        self.cut = 0  # close the connection in the middle of this many more file bodies
        self.cut_keep = 0.5  # the share of the body sent before the cut

    def publish(self, repo_id: str, files: dict[str, bytes], *, summary="upload", private=False, tag=None) -> str:
        """Commit ``files`` to ``repo_id`` (created if new) on main, optionally tagged; return the commit oid."""
        with self.lock:
            repo = self.repos.setdefault(repo_id, Repo(private=private))
            oid = repo.add_commit(dict(files), summary)
            if tag is not None:
                repo.refs[tag] = oid
            return oid


class HubHandler(LoopbackHandler):
    state: HubState  # set on the subclass made by ``serve``

    def do_GET(self):
        self._dispatch("GET")

    def do_POST(self):
        self._dispatch("POST")

    def do_HEAD(self):
        self._dispatch("GET", head=True)

    def _dispatch(self, method, head=False):
        path = self.path.split("?", 1)[0]
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        with self.state.lock:
            self.state.requests.append(
                {
                    "method": self.command,
                    "path": self.path,
                    "body": body,
                    "headers": dict(self.headers.items()),
                }
            )
        authorization = self.headers.get("Authorization")
        self.anonymous = authorization is None
        if authorization is not None and authorization != f"Bearer {self.state.token}":
            return self._json(401, {"error": "Invalid credentials in Authorization header"})
        if self.anonymous and method != "GET":
            return self._json(401, {"error": "Authorization header required"})
        for route_method, pattern, handler in ROUTES:
            match = pattern.match(path)
            if route_method == method and match:
                groups = match.groupdict()
                if groups.pop("kind", None) == "spaces":
                    groups["repo"] = f"spaces/{groups['repo']}"
                with self.state.lock:
                    return getattr(self, handler)(body, head=head, **groups)
        self._json(404, {"error": f"no route for {method} {path}"})

    def _json(self, status, payload, extra_headers=None):
        self.send_body(json.dumps(payload).encode(), status, extra_headers)

    def _endpoint(self):
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    def _repo(self, repo):
        stored = self.state.repos.get(repo)
        if stored is None or (stored.private and self.anonymous):  # the Hub hides private repos from strangers
            self._json(404, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"})
            return None
        return stored

    def _commit(self, stored, rev):
        oid = stored.resolve(rev)
        if oid is None:
            self._json(404, {"error": f"Invalid rev id: {rev}"}, {"X-Error-Code": "RevisionNotFound"})
        return oid

    def create_repo(self, body, head=False):
        payload = json.loads(body)
        repo_id = f"{payload.get('organization') or self.state.user}/{payload['name']}"
        kind = payload.get("type", "model")
        if kind not in ("model", "space"):
            return self._json(400, {"error": "this test server hosts models and spaces only"})
        if kind == "space":
            if not payload.get("sdk"):
                return self._json(400, {"error": "a Space needs an sdk"})
            repo_id = f"spaces/{repo_id}"
        url = f"{self._endpoint()}/{repo_id}"
        if repo_id in self.state.repos:
            return self._json(409, {"error": "You already created this model repo", "url": url})
        self.state.repos[repo_id] = Repo(private=payload.get("visibility") == "private")
        self._json(200, {"url": url, "name": repo_id})

    def validate_yaml(self, body, head=False):
        content = json.loads(body)["content"]
        match = re.match(r"^---\n(.*?)\n---\n", content, re.DOTALL)
        try:
            if match:
                yaml.safe_load(match.group(1))
        except yaml.YAMLError as error:
            return self._json(400, {"errors": [{"message": str(error)}], "warnings": []})
        self._json(200, {"errors": [], "warnings": []})

    def preupload(self, body, repo, rev, head=False):
        stored = self._repo(repo)
        if stored is None:
            return
        files = json.loads(body)["files"]
        self._json(
            200,
            {
                "files": [
                    {
                        "path": f["path"],
                        "uploadMode": "regular",
                        "shouldIgnore": False,
                        "oid": _git_blob_oid(stored.files[f["path"]]) if f["path"] in stored.files else None,
                    }
                    for f in files
                ],
                "commitOid": stored.sha,
            },
        )

    def commit(self, body, repo, rev, head=False):
        stored = self._repo(repo)
        if stored is None:
            return
        lines = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
        if not lines or lines[0]["key"] != "header":
            return self._json(400, {"error": "commit payload must start with a header line"})
        changes = {}
        for line in lines[1:]:
            value = line["value"]
            if line["key"] == "file":
                if value.get("encoding") != "base64":
                    return self._json(400, {"error": f"unsupported encoding for {value['path']}"})
                changes[value["path"]] = base64.b64decode(value["content"])
            elif line["key"] == "deletedFile":
                changes[value["path"]] = None
            else:
                return self._json(
                    400,
                    {"error": f"this test server accepts only regular uploads, got {line['key']}"},
                )
        oid = stored.add_commit(changes, lines[0]["value"]["summary"])
        self._json(
            200,
            {"commitUrl": f"{self._endpoint()}/{repo}/commit/{oid}", "commitOid": oid},
        )

    def model_info(self, body, repo, rev=None, head=False):
        stored = self._repo(repo)
        if stored is None:
            return
        oid = self._commit(stored, rev or "main")
        if oid is None:
            return
        self._json(
            200,
            {
                "id": repo,
                "private": stored.private,
                "sha": oid,
                "siblings": [{"rfilename": path} for path in sorted(stored.snapshots.get(oid, {}))],
            },
        )

    def resolve(self, body, repo, rev, path, head=False):
        if self.state.unavailable:
            self.state.unavailable -= 1
            return self._json(503, {"error": "Service Unavailable"})
        stored = self._repo(repo)
        if stored is None:
            return
        oid = self._commit(stored, rev)
        if oid is None:
            return
        files = stored.snapshots[oid]
        path = urllib.parse.unquote(path)
        if path not in files:
            # The commit header lets huggingface_hub remember the file's absence in its cache (.no_exist).
            return self._json(
                404, {"error": "Entry not found"}, {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": oid}
            )
        data = files[path]
        headers = {"ETag": f'"{_git_blob_oid(data)}"', "X-Repo-Commit": oid}
        status, body = 200, data
        start = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
        if start and not head and int(start.group(1)) < len(data):
            status, body = 206, data[int(start.group(1)) :]
            headers["Content-Range"] = f"bytes {start.group(1)}-{len(data) - 1}/{len(data)}"
        if self.state.cut and not head:
            self.state.cut -= 1
            return self._cut(body, status, headers)
        self.send_body(body, status, headers, content_type="application/octet-stream", head=head)

    def _cut(self, body, status, headers):
        """Promise ``body`` whole (Content-Length), send ``cut_keep`` of it, drop the connection."""
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(body[: int(len(body) * self.state.cut_keep)])
        self.wfile.flush()
        self.close_connection = True


def _git_blob_oid(data: bytes) -> str:
    """The git blob sha1 huggingface_hub compares against to skip unchanged files."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class HubServer:
    """``with HubServer(token) as hub:`` -> ``hub.endpoint``, ``hub.state``; serves on 127.0.0.1 in a thread."""

    def __init__(self, token: str):
        self.state = HubState(token)
        handler = type("BoundHubHandler", (HubHandler,), {"state": self.state})
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.endpoint = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join()


@contextlib.contextmanager
def download_hub(monkeypatch, hf_home, token="hf_TESTtoken0123456789abcdefSECRET"):
    """A loopback Hub that huggingface_hub downloads from, with a fresh cache under ``hf_home``, online, no xet.

    huggingface_hub reads HF_ENDPOINT, HF_HOME and HF_HUB_DISABLE_XET once, at import, into its constants; this sets
    the constants as those variables would (tests/test_compare.py also runs a process configured by the variables).
    """
    from huggingface_hub import constants

    with HubServer(token) as server:
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        monkeypatch.setattr(constants, "ENDPOINT", server.endpoint)
        template = server.endpoint + "/{repo_id}/resolve/{revision}/{filename}"
        monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", template)
        monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hf_home / "hub"))
        monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
        monkeypatch.delenv("HF_TOKEN", raising=False)
        yield server
