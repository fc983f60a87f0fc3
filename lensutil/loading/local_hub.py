"""A local stand-in for the HuggingFace hub, on 127.0.0.1, that answers as the hub does.

What huggingface_hub needs from it is in shared/HUB_FACTS.md: /api/models/{repo}[/revision/{rev}]
with a "sha", /api/models/{repo}/tree/{rev}, HEAD and GET of /{repo}/resolve/{rev}/{file} with
ETag, X-Repo-Commit and Content-Length, and errors chosen by the X-Error-Code header. Scenarios:
public repositories, gated ones (401 without a token, 403 with a token lacking access, files with
one that has it), an invalid token (401 "Invalid credentials in Authorization header"), a missing
repository, a missing revision. Tokens are made at run time by the caller and kept in memory only.

Also two endpoints with no hub behind them: one that refuses connections and one that accepts
them but never answers (what a dead proxy or a firewall that drops packets looks like).

lensutil's own, for tests and teaching: tests/test_hub.py and notebooks/09_hf_tokens_and_gated_models.ipynb
use it. Not a hub: a repository's commits are given whole (no branches but main), no uploads, no LFS redirects.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import socket
import threading
import time
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit
from . import zoo

INVALID_CREDENTIALS = "Invalid credentials in Authorization header"


def make_token() -> str:
    """A fresh fake token, made at run time (nothing token-shaped is written in any file)."""
    return "hf_" + secrets.token_hex(17)


class Repo:
    """A model repository: its files (name -> bytes) at its newest commit ("main"), whether it is gated,
    and, optionally, older commits (`history`, oldest first: each a files dict) that `revision=` can pin."""

    def __init__(self, repo_id: str, files: dict[str, bytes], gated: bool = False, history: list[dict[str, bytes]] = ()):
        self.repo_id, self.files, self.gated = repo_id, files, gated
        self.sha = hashlib.sha1(repo_id.encode()).hexdigest()
        self.commits = {hashlib.sha1(f"{repo_id}@{i}".encode()).hexdigest(): old for i, old in enumerate(history)}
        self.commits[self.sha] = files

    def at(self, rev: str) -> tuple[str, dict[str, bytes]] | None:
        """(commit sha, files) of a revision: "main", or a commit's full sha; None if there is no such revision."""
        sha = self.sha if rev == "main" else rev
        return (sha, self.commits[sha]) if sha in self.commits else None

    @classmethod
    def from_dir(cls, repo_id: str, directory, gated: bool = False) -> "Repo":
        files = {p.name: p.read_bytes() for p in sorted(Path(directory).iterdir()) if p.is_file()}
        return cls(repo_id, files, gated)


class HubServer:
    """`with HubServer(repos, access) as hub:` serves `repos` at hub.url until the block ends.

    access: token -> the gated repo ids it may read. A token not in `access` is invalid.
    hub.requests records (method, path, sent_a_token) for each request, never a token.
    """

    def __init__(self, repos: list[Repo], access: dict[str, set[str]] | None = None):
        self.repos = {r.repo_id: r for r in repos}
        self.access = dict(access or {})
        self.requests: list[tuple[str, str, bool]] = []
        self.delay_s = 0.0  # each answer waits this long first: a server on a loaded machine (tests)
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def start(self) -> "HubServer":
        self._thread.start()
        return self

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> "HubServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()


def _handler_for(hub: HubServer):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):  # quiet: the tests read hub.requests instead
            pass

        def do_HEAD(self):
            self._answer(body=False)

        def do_GET(self):
            self._answer(body=True)

        def _send(self, status: int, payload: bytes, headers: dict, body: bool) -> None:
            self.send_response(status)
            for k, v in {"Content-Length": str(len(payload)), **headers}.items():
                self.send_header(k, v)
            self.end_headers()
            if body:
                self.wfile.write(payload)

        def _error(self, status: int, code: str | None, message: str, body: bool, commit: str | None = None) -> None:
            headers = {"Content-Type": "application/json", "X-Error-Message": message}
            if code:
                headers["X-Error-Code"] = code
            if commit is not None:  # the commit the answer is about: huggingface_hub records it for the revision
                headers["X-Repo-Commit"] = commit
            self._send(status, json.dumps({"error": message}).encode(), headers, body)

        def _answer(self, body: bool) -> None:
            if hub.delay_s:
                time.sleep(hub.delay_s)
            path = unquote(urlsplit(self.path).path)
            auth = self.headers.get("Authorization") or ""
            token = auth[len("Bearer "):] if auth.startswith("Bearer ") else None
            hub.requests.append((self.command, path, token is not None))
            if token is not None and token not in hub.access:
                return self._error(401, None, INVALID_CREDENTIALS, body)
            if path.startswith("/api/models/"):
                rest = path[len("/api/models/"):]
                for marker in ("/revision/", "/tree/"):
                    if marker in rest:
                        repo_id, tail = rest.split(marker, 1)
                        rev, _, sub = tail.partition("/")
                        return self._api(repo_id, rev, marker.strip("/"), sub, token, body)
                return self._api(rest, "main", "revision", "", token, body)
            if "/resolve/" in path:
                repo_id, tail = path.lstrip("/").split("/resolve/", 1)
                rev, _, filename = tail.partition("/")
                return self._file(repo_id, rev, filename, token, body)
            return self._error(404, None, "Not found", body)

        def _repo(self, repo_id: str, rev: str, token: str | None, body: bool) -> Repo | None:
            repo = hub.repos.get(repo_id)
            if repo is None:
                self._error(404, "RepoNotFound", "Repository not found", body)
                return None
            if repo.gated and token is None:
                self._error(401, "GatedRepo", f"Access to model {repo_id} is restricted. You must have access to it "
                            "and be authenticated to access it. Please log in.", body)
                return None
            if repo.gated and repo_id not in hub.access.get(token, set()):
                self._error(403, "GatedRepo", f"Access to model {repo_id} is restricted and you are not in the "
                            f"authorized list. Visit {hub.url}/{repo_id} to ask for access.", body)
                return None
            if repo.at(rev) is None:
                self._error(404, "RevisionNotFound", f"Invalid rev id: {rev}", body)
                return None
            return repo

        def _api(self, repo_id, rev, kind, sub, token, body) -> None:
            repo = self._repo(repo_id, rev, token, body)
            if repo is None:
                return
            sha, files = repo.at(rev)
            if kind == "tree":
                if sub:  # e.g. additional_chat_templates: no such folder
                    return self._error(404, "EntryNotFound", f"{sub} does not exist on {rev}", body, sha)
                info = [{"type": "file", "path": n, "size": len(b), "oid": hashlib.sha1(b).hexdigest()}
                        for n, b in files.items()]
            else:
                info = {"id": repo_id, "modelId": repo_id, "sha": sha, "private": False,
                        "gated": "manual" if repo.gated else False, "siblings": [{"rfilename": n} for n in files]}
            self._send(200, json.dumps(info).encode(), {"Content-Type": "application/json"}, body)

        def _file(self, repo_id, rev, filename, token, body) -> None:
            repo = self._repo(repo_id, rev, token, body)
            if repo is None:
                return
            sha, files = repo.at(rev)
            data = files.get(filename)
            if data is None:
                return self._error(404, "EntryNotFound", f"{filename} does not exist on {rev}", body, sha)
            headers = {"ETag": f'"{hashlib.sha256(data).hexdigest()}"', "X-Repo-Commit": sha,
                       "Content-Type": "application/octet-stream"}
            self._send(200, data, headers, body)

    return Handler


def refusing_endpoint() -> str:
    """An http URL on loopback where nothing listens: connections are refused at once."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


@contextmanager
def silent_endpoint():
    """An http URL on loopback that accepts connections (the kernel completes them) and never answers."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(64)
    try:
        yield f"http://127.0.0.1:{s.getsockname()[1]}"
    finally:
        s.close()


def standard_repos() -> list[Repo]:
    """The scenarios' repositories: the zoo's tiny models under real hub names.

    "gpt2" (public, the zoo's tiny-gpt2: what TransformerLens' "gpt2-small" points at), and
    "mistralai/Mistral-7B-v0.1" (gated, the zoo's tiny-mistral).
    """
    return [Repo.from_dir("gpt2", zoo.resolve("tiny-gpt2")),
            Repo.from_dir("mistralai/Mistral-7B-v0.1", zoo.resolve("tiny-mistral"), gated=True)]


def renamed_keys_repo(repo_id: str, zoo_name: str, old: str, new: str) -> Repo:
    """A repository whose newest commit re-saved the zoo model with `old` in its weight names replaced by
    `new` (what a checkpoint saved by another transformers version or converter looks like), and whose
    one older commit (repo.commits' first key) holds the original layout: what `revision=` pins."""
    import safetensors.torch as st

    original = Repo.from_dir(repo_id, zoo.resolve(zoo_name)).files
    weights = st.load(original["model.safetensors"])
    renamed = st.save({k.replace(old, new): v for k, v in weights.items()}, metadata={"format": "pt"})
    return Repo(repo_id, {**original, "model.safetensors": renamed}, history=[original])
