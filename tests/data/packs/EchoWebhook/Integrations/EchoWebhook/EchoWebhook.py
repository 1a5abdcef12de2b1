"""Echo Webhook: a small long-running integration for the xsoar-local tests.

POST any path: one incident per request, answered with the created incidents. POST /upload: size and sha256 of
the body. GET /slow?seconds=N: answers after N seconds. GET /stream?size=N: N bytes, chunked. Any other request:
the request as seen here; GET /environment: the interpreter and libraries it runs on. With fail_startup set,
it reports that text as a module health error and waits without listening. test-module fails when the token is
"bad"; fetch-incidents returns the stored samples.
"""

# ruff: noqa: F403, F405  (CommonServerPython's names are in scope, as on the platform)
import hashlib
import json
import os
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import demistomock as demisto
from CommonServerPython import *

MAX_SAMPLES = 20


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format, *args):
        demisto.debug(format % args)

    def _reply(self, status, payload):
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _body(self):
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().strip(), 16)
                if size == 0:
                    self.rfile.readline()
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def do_GET(self):
        url = urlsplit(self.path)
        query = parse_qs(url.query)
        if url.path == "/slow":
            time.sleep(float(query["seconds"][0]))
            self._reply(200, {"slept": True})
        elif url.path == "/stream":
            size = int(query["size"][0])
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            chunk = b"x" * 65536
            left = size
            while left:
                part = chunk[: min(left, len(chunk))]
                self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
                left -= len(part)
            self.wfile.write(b"0\r\n\r\n")
        elif url.path == "/environment":
            self._reply(200, environment())
        else:
            self._echo()

    def _echo(self):
        url = urlsplit(self.path)
        headers = dict(self.headers.items())
        self._reply(200, {"method": self.command, "path": url.path, "query": url.query, "headers": headers})

    def do_PUT(self):
        self._body()
        self._echo()

    do_DELETE = do_PATCH = do_OPTIONS = do_PUT

    def do_POST(self):
        url = urlsplit(self.path)
        token = demisto.params().get("token")
        if token and self.headers.get("X-Token") != token:
            # Refused before the body is read, as a careful receiver does. The rest of the body is then read
            # and dropped until the caller closes (a lingering close): closing with unread data would reset the
            # connection, and the reset could destroy the answer before the caller reads it.
            self.close_connection = True
            self._reply(401, {"error": "bad token"})
            while self.rfile.read1(65536):
                pass
            return
        body = self._body()
        if url.path == "/upload":
            self._reply(200, {"size": len(body), "sha256": hashlib.sha256(body).hexdigest()})
            return
        try:
            event = json.loads(body or b"{}")
        except ValueError:
            self._reply(400, {"error": "not JSON"})
            return
        raw = {"event": event, "path": url.path, "query": url.query, "headers": dict(self.headers.items())}
        incident = {
            "name": event.get("name") or "Echo webhook incident",
            "type": event.get("type") or demisto.params().get("incidentType") or "Unclassified",
            "severity": event.get("severity") or 0,
            "rawJSON": json.dumps(raw),
        }
        created = demisto.createIncidents([incident])
        if argToBoolean(demisto.params().get("store_samples") or False):
            context = get_integration_context()
            samples = json.loads(context.get("samples") or "[]")
            set_integration_context({"samples": json.dumps([*samples, incident][-MAX_SAMPLES:])})
        self._reply(200, created)


def environment():
    """What this process runs on: the interpreter, and the libraries that tell the image's stack from another."""
    import importlib.metadata
    import importlib.util

    def version(name):
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            return None

    return {
        "executable": sys.executable,
        "prefix": sys.prefix,
        "python": ".".join(str(part) for part in sys.version_info[:3]),
        "modules": {name: importlib.util.find_spec(name) is not None for name in ("httptools", "uvloop", "pydantic")},
        "versions": {name: version(name) for name in ("pydantic", "fastapi", "uvicorn", "starlette", "h11")},
    }


def test_module(params):
    if params.get("token") == "bad":
        return "token 'bad' is not accepted"
    return "ok"


def long_running_execution(params):
    port = int(params.get("longRunningPort"))
    problem = params.get("fail_startup")
    if problem:
        # As an integration whose own start-up checks fail does: it says why in module health and keeps waiting
        # for new params instead of exiting (which the platform would restart over and over).
        demisto.updateModuleHealth(f"An error occurred: {problem}", True)
        while True:
            time.sleep(3600)
    server = ThreadingHTTPServer((os.environ.get("GENERIC_WEBHOOK_BIND_HOST", "127.0.0.1"), port), Handler)
    server.daemon_threads = True
    if argToBoolean(params.get("spawn_child") or False):
        # A process of the instance's own: the platform must end it together with the instance.
        subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    crash_after = float(params.get("crash_after") or 0)
    if crash_after:
        threading.Timer(crash_after, lambda: os._exit(3)).start()
    demisto.info(f"Echo Webhook listening on port {port}")
    server.serve_forever()


def fetch_samples():
    return json.loads(get_integration_context().get("samples") or "[]")


def main():
    params = demisto.params()
    command = demisto.command()
    try:
        if command == "test-module":
            result = test_module(params)
            if result != "ok":
                raise DemistoException(result)
            return_results(result)
        elif command == "long-running-execution":
            long_running_execution(params)
        elif command == "fetch-incidents":
            demisto.incidents(fetch_samples())
        else:
            raise NotImplementedError(f"Command {command} is not implemented.")
    except Exception as e:
        return_error(f"Failed to execute {command} command.\nError:\n{e}")


if __name__ in ("__main__", "__builtin__", "builtins"):
    main()
