"""TCP forwarding from the host's loopback into a network namespace of the test bed.

``127.0.0.1:LISTEN`` in the host namespace; each accepted connection is relayed from a thread
that has joined the namespace, so it reaches ``ADDRESS:PORT`` as seen from inside (the API
server on the namespace's own 127.0.0.1, or a Serve proxy on a pod IP). This is the only way
host processes (pytest, kubectl, a user's curl) reach the fake cluster; they never connect to
its addresses themselves.

Run as a process (``python -m lorafleet_testbed.forward --netns NAME LISTEN=ADDRESS:PORT ...``)
so a detached cluster keeps its forwards after the command that started it has exited."""

from __future__ import annotations

import argparse
import contextlib
import logging
import signal
import socket
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from lorafleet_testbed import netns, process

log = logging.getLogger("lorafleet_testbed.forward")
_CHUNK = 65536


@dataclass(frozen=True)
class Route:
    """``127.0.0.1:listen_port`` on the host to ``target_host:target_port`` in the namespace."""

    listen_port: int
    target_host: str
    target_port: int

    def __str__(self) -> str:
        return f"{self.listen_port}={self.target_host}:{self.target_port}"

    @classmethod
    def parse(cls, text: str) -> Route:
        listen, target = text.split("=", 1)
        host, port = target.rsplit(":", 1)
        return cls(int(listen), host, int(port))


class Forwarder:
    """Listeners on the host's loopback, relays inside ``namespace``; threads only."""

    def __init__(self, namespace: netns.NetworkNamespace, routes: Sequence[Route]) -> None:
        self.namespace = namespace
        self.routes = list(routes)
        self._listeners: list[socket.socket] = []
        self._closed = threading.Event()

    def start(self) -> None:
        for route in self.routes:
            listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind(("127.0.0.1", route.listen_port))
            listener.listen(64)
            self._listeners.append(listener)
            threading.Thread(
                target=self._accept, args=(listener, route), name=f"accept-{route}", daemon=True
            ).start()
            log.info("Forwarding 127.0.0.1:%s to %s:%s in %s", route.listen_port,
                     route.target_host, route.target_port, self.namespace.name)  # fmt: skip

    def close(self) -> None:
        self._closed.set()
        for listener in self._listeners:
            with contextlib.suppress(OSError):
                listener.close()

    def _accept(self, listener: socket.socket, route: Route) -> None:
        while not self._closed.is_set():
            try:
                client, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=self._relay, args=(client, route), daemon=True).start()

    def _relay(self, client: socket.socket, route: Route) -> None:
        # This thread joins the namespace and ends with the connection, so it never keeps the
        # namespace alive after the forwarder is stopped.
        try:
            netns.join(self.namespace)
            upstream = netns.connect(route.target_host, route.target_port, timeout=10)
        except (OSError, netns.NetnsError) as err:
            log.warning("Refused a connection for %s: %s", route, err)
            client.close()
            return
        upstream.settimeout(None)
        threading.Thread(target=_pump, args=(upstream, client), daemon=True).start()
        _pump(client, upstream)


def _pump(source: socket.socket, sink: socket.socket) -> None:
    try:
        while data := source.recv(_CHUNK):
            sink.sendall(data)
    except OSError:
        pass
    finally:
        for sock in (source, sink):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        source.close()


def listening(port: int) -> bool:
    """True when something accepts connections on the host's 127.0.0.1:``port``."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def start_process(
    name: str,
    namespace: netns.NetworkNamespace,
    routes: Sequence[Route],
    log_dir: Path,
    *,
    detach: bool = False,
) -> process.ManagedProcess:
    """Run a forwarder as a process of its own and wait until it listens."""
    proc = process.start(
        name,
        [sys.executable, "-m", "lorafleet_testbed.forward", "--netns", namespace.name,
         *(str(r) for r in routes)],
        log_dir,
        detach=detach,
    )  # fmt: skip
    process.wait_until(
        proc,
        lambda: all(listening(r.listen_port) for r in routes),
        timeout=30,
        what="listening",
    )
    return proc


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lorafleet_testbed.forward")
    parser.add_argument("--netns", required=True, help="network namespace to forward into")
    parser.add_argument("routes", nargs="+", type=Route.parse, help="LISTEN_PORT=ADDRESS:PORT")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    forwarder = Forwarder(netns.NetworkNamespace(args.netns), args.routes)
    forwarder.start()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    # Ends by itself once the namespace is gone: nothing is left to forward to.
    while forwarder.namespace.exists() and not stop.wait(1):
        pass
    forwarder.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
