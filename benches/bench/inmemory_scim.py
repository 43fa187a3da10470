#!/usr/bin/env python3
"""The 1-client baseline of `make bench statements`: a SCIM server that keeps users in a
dict (no database, no durability, no read models), in Python's standard library only.

It answers POST /scim/v2/Users (201, 400 without a userName, 409 on a userName taken in any
case) and GET /scim/v2/Users/{id} (200, 404) over HTTP/1.1 with kept-alive connections, and
401 without the bearer token it was given. It prints "port N" on its first line once it
listens on 127.0.0.1, and serves until it is killed.

usage: inmemory_scim.py TOKEN
"""

import json
import sys
import threading
import uuid
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

USER_SCHEMA = "urn:ietf:params:scim:schemas:core:2.0:User"
ERROR_SCHEMA = "urn:ietf:params:scim:api:messages:2.0:Error"
PREFIX = "/scim/v2/Users"
MAX_BODY = 1 << 20

users = {}
names = set()
lock = threading.Lock()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out in two writes: without this, Nagle's algorithm holds the body
    # until the client's delayed ACK (40 ms).
    disable_nagle_algorithm = True

    def log_message(self, *args):
        pass

    def answer(self, status, doc, location=None):
        body = json.dumps(doc).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/scim+json")
        self.send_header("Content-Length", str(len(body)))
        if location:
            self.send_header("Location", location)
        self.end_headers()
        self.wfile.write(body)

    def error(self, status, detail, scim_type=None):
        doc = {"schemas": [ERROR_SCHEMA], "status": str(status), "detail": detail}
        if scim_type:
            doc["scimType"] = scim_type
        self.answer(status, doc)

    def authorized(self):
        if self.headers.get("Authorization") == "Bearer " + TOKEN:
            return True
        self.error(401, "a bearer token is required")
        return False

    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY:
            # What is left of the body is not read: the connection cannot carry another request.
            self.close_connection = True
            return self.error(413, "the body is too large")
        raw = self.rfile.read(length)
        if not self.authorized():
            return
        if self.path != PREFIX:
            return self.error(404, "no such endpoint")
        try:
            doc = json.loads(raw)
        except ValueError:
            return self.error(400, "the body is not JSON", "invalidSyntax")
        name = doc.get("userName") if isinstance(doc, dict) else None
        if not isinstance(name, str) or not name:
            return self.error(400, "userName is required", "invalidValue")
        now = datetime.now(timezone.utc).isoformat()
        uid = str(uuid.uuid4())
        doc.update(
            id=uid,
            schemas=[USER_SCHEMA],
            meta={
                "resourceType": "User",
                "created": now,
                "lastModified": now,
                "location": f"{PREFIX}/{uid}",
                "version": 'W/"1"',
            },
        )
        with lock:
            if name.lower() in names:
                return self.error(409, f"userName {name!r} is taken", "uniqueness")
            names.add(name.lower())
            users[uid] = doc
        self.answer(201, doc, doc["meta"]["location"])

    def do_GET(self):
        if not self.authorized():
            return
        uid = self.path[len(PREFIX) + 1 :] if self.path.startswith(PREFIX + "/") else None
        with lock:
            doc = users.get(uid)
        if doc is None:
            return self.error(404, "no such user")
        self.answer(200, doc)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__.strip().splitlines()[-1])
    TOKEN = sys.argv[1]
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    print(f"port {server.server_address[1]}", flush=True)
    server.serve_forever()
