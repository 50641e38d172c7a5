"""A stand-in for the Hugging Face hub on 127.0.0.1, serving local folders as model repositories.

Documented ``hf download`` commands run against it (``HF_ENDPOINT``) where the tests run without
network: the command goes through huggingface_hub's whole download path (the repository's revision,
its file listing, then each file's metadata and bytes), and what it writes is what a reader gets,
with the small files in place of the published ones.

It answers the requests that path makes, with the JSON fields and headers huggingface_hub reads:

- ``GET /api/models/OWNER/NAME/revision/REVISION``: ``{"id", "sha", "siblings"}``;
- ``GET /api/models/OWNER/NAME/tree/REVISION``: each file's ``type``, ``path``, ``size`` and ``oid``
  (its git blob id), on one page;
- ``HEAD`` and ``GET /OWNER/NAME/resolve/REVISION/FILE``: the bytes, with ``X-Repo-Commit``, ``ETag``
  (the blob id) and ``Content-Length``; no ``X-Xet-*`` headers, so files come over plain HTTP.

Anything else (a file or repository it does not serve, the command-line tool's other queries) is a
404 with the ``X-Error-Code`` the hub gives.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit


def blob_id(data: bytes) -> str:
    """The git blob id of ``data``, which the hub gives as a small file's ``oid`` and ``ETag``."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class Repository:
    """The files of one folder (not its subfolders) as one commit of a model repository."""

    def __init__(self, repo_id: str, folder: Path, files: tuple[str, ...]) -> None:
        self.repo_id = repo_id
        self.files = {name: (folder / name).read_bytes() for name in files}
        listing = "".join(f"{name} {blob_id(data)}\n" for name, data in sorted(self.files.items()))
        self.commit = hashlib.sha1(listing.encode()).hexdigest()

    def revision(self, revision: str) -> bool:
        return revision in ("main", self.commit)


def _handler(repositories: dict[str, Repository]) -> type[BaseHTTPRequestHandler]:
    class Hub(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            pass  # the requests stay out of the tests' output

        def reply(self, status: int, body: bytes, headers: dict[str, str]) -> None:
            self.send_response(status)
            for name, value in {**headers, "Content-Length": str(len(body))}.items():
                self.send_header(name, value)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def not_found(self, code: str) -> None:
            self.reply(404, json.dumps({"error": code}).encode(), {"X-Error-Code": code})

        def answer(self) -> None:
            path = unquote(urlsplit(self.path).path)
            api = path.startswith("/api/models/")
            parts = path.removeprefix("/api/models/" if api else "/").split("/")
            repository = repositories.get("/".join(parts[:2]))
            if repository is None or len(parts) < 4:
                return self.not_found("RepoNotFound")
            kind, revision, name = parts[2], parts[3], "/".join(parts[4:])
            if not repository.revision(revision):
                return self.not_found("RevisionNotFound")
            if api and kind == "revision":
                siblings = [{"rfilename": name} for name in repository.files]
                body = {"id": repository.repo_id, "sha": repository.commit, "siblings": siblings}
                return self.reply(200, json.dumps(body).encode(), {"Content-Type": "application/json"})
            if api and kind == "tree":
                entries = [
                    {"type": "file", "path": name, "size": len(data), "oid": blob_id(data)}
                    for name, data in repository.files.items()
                ]
                return self.reply(200, json.dumps(entries).encode(), {"Content-Type": "application/json"})
            if not api and kind == "resolve" and name in repository.files:
                data = repository.files[name]
                headers = {
                    "Content-Type": "application/octet-stream",
                    "X-Repo-Commit": repository.commit,
                    "ETag": f'"{blob_id(data)}"',
                }
                return self.reply(200, data, headers)
            return self.not_found("EntryNotFound")

        do_GET = do_HEAD = answer

    return Hub


@contextmanager
def serve(repositories: dict[str, tuple[Path, tuple[str, ...]]]) -> Iterator[str]:
    """Serve ``{repo_id: (folder, file names)}`` on a free port of 127.0.0.1; yields the endpoint URL,
    what ``HF_ENDPOINT`` takes."""
    served = {repo_id: Repository(repo_id, folder, files) for repo_id, (folder, files) in repositories.items()}
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(served))
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), name="local-hub", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
