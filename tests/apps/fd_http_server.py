#!/usr/bin/env python3
"""A worker for xypriss's socket-activation tests, standard library only.

It serves HTTP on the sockets it inherits as fds 3, 4, ... (systemd's
LISTEN_FDS protocol, as `xypriss run --listen` hands them over), and tells
NOTIFY_SOCKET, when set, that it is ready: after READY_DELAY_MS milliseconds
if set, and never if READY_NEVER is set. On SIGTERM it stops accepting,
finishes the request in hand, and exits 0, as a graceful server does. `GET /` answers a JSON object:
this process's pid, XYPRISS_WORKER_ID, LISTEN_PID and whether it names this
process, the fd names, and each inherited fd's family and address, so a test
can check what the worker really received.
"""

import http.server
import json
import os
import signal
import socket
import socketserver
import sys
import threading
import time

LISTEN_FDS_START = 3


def describe(sock):
    """The fd, its address family, and the address it is bound to."""
    address = sock.getsockname()
    if sock.family == socket.AF_UNIX:
        if isinstance(address, bytes):
            address = address.decode(errors="replace")
    elif sock.family == socket.AF_INET6:
        address = f"[{address[0]}]:{address[1]}"
    else:
        address = f"{address[0]}:{address[1]}"
    return {"fd": sock.fileno(), "family": sock.family.name, "address": address}


def inherited_sockets():
    count = os.environ.get("LISTEN_FDS")
    if not count:
        sys.exit("fd_http_server: LISTEN_FDS is not set: run me with xypriss run --listen")
    return [
        socket.socket(fileno=fd)
        for fd in range(LISTEN_FDS_START, LISTEN_FDS_START + int(count))
    ]


class Handler(http.server.BaseHTTPRequestHandler):
    report = {}

    def do_GET(self):
        if self.path != "/":
            self.send_error(404)
            return
        body = json.dumps(self.report).encode() + b"\n"
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format, *args):
        # A Unix socket's client has no address to print.
        sys.stderr.write(f"fd_http_server: {format % args}\n")


class InheritedServer(socketserver.TCPServer):
    """An HTTP server on a socket that is already bound and listening."""

    def __init__(self, sock):
        super().__init__(None, Handler, bind_and_activate=False)
        self.socket.close()
        self.socket = sock


def notify(state):
    """Sends `state` to NOTIFY_SOCKET (a path, or @name for the abstract namespace)."""
    path = os.environ.get("NOTIFY_SOCKET")
    if not path:
        return
    if path.startswith("@"):
        path = "\0" + path[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.connect(path)
        sock.send(state.encode())


def main():
    sockets = inherited_sockets()
    pid = os.getpid()
    listen_pid = os.environ.get("LISTEN_PID")
    names = os.environ.get("LISTEN_FDNAMES")
    Handler.report = {
        "pid": pid,
        "workerId": os.environ.get("XYPRISS_WORKER_ID"),
        "listenPid": listen_pid,
        "listenPidMatched": listen_pid == str(pid),
        "fdNames": names.split(":") if names else [],
        "port": os.environ.get("PORT"),
        "fds": [describe(sock) for sock in sockets],
    }
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    time.sleep(int(os.environ.get("READY_DELAY_MS", "0")) / 1000)
    servers = [InheritedServer(sock) for sock in sockets]
    for server in servers:
        threading.Thread(target=server.serve_forever, daemon=True).start()
    if not os.environ.get("READY_NEVER"):
        notify(f"READY=1\nSTATUS=serving on {len(sockets)} sockets\nMAINPID={pid}")
    stop.wait()
    # Stop accepting; serve_forever returns once the request in hand is done.
    for server in servers:
        server.shutdown()
    sys.exit(0)


if __name__ == "__main__":
    main()
