"""Starting, health-checking and stopping the test bed's server processes."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

_PR_SET_PDEATHSIG = 1


class StartupError(RuntimeError):
    """A server did not become healthy; the message ends with the tail of its log."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _die_with_parent() -> None:
    # Runs in the child between fork and exec: when the process that started us (pytest)
    # dies, even by SIGKILL, the kernel sends SIGTERM, so no server outlives its test session.
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


@dataclass
class ManagedProcess:
    """One server process with its log file."""

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, lines: int = 25) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, timeout: float = 10.0) -> None:
        stop_pid(self.pid, timeout)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout=1)


def start(
    name: str,
    argv: Sequence[str],
    log_dir: Path,
    *,
    env: Mapping[str, str] | None = None,
    detach: bool = False,
    cwd: Path | None = None,
) -> ManagedProcess:
    """Start ``argv`` with output into ``log_dir/name.log``.

    ``detach=True`` is for ``make cluster-up``: the server keeps running after the command
    returns and belongs to a session of its own. Otherwise it dies with its parent.
    """
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{name}.log"
    full_env = dict(os.environ)
    if env:
        full_env.update(env)
    with log_path.open("ab") as log:
        popen = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=full_env,
            cwd=cwd,
            start_new_session=detach,
            preexec_fn=None if detach else _die_with_parent,
        )
    return ManagedProcess(name=name, popen=popen, log_path=log_path)


def stop_pid(pid: int, timeout: float = 10.0) -> None:
    """SIGTERM, wait up to ``timeout`` seconds, then SIGKILL. Quiet if already gone."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not pid_alive(pid):
            return
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    # Reap it if it is our child, so it does not linger as a zombie.
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, 0)


def pid_alive(pid: int) -> bool:
    try:
        waited, _ = os.waitpid(pid, os.WNOHANG)
        if waited == pid:
            return False
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie that is not our child still answers kill(0); /proc tells the truth.
    with contextlib.suppress(OSError):
        status = Path(f"/proc/{pid}/status").read_text()
        if "\nState:\tZ" in status:
            return False
    return True


def http_ok(
    url: str,
    *,
    ssl_context: ssl.SSLContext | None = None,
    expect_body: bytes | None = None,
    timeout: float = 2.0,
) -> bool:
    """True when ``url`` answers 2xx (and, if given, with exactly ``expect_body``)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout, context=ssl_context) as resp:  # noqa: S310
            body: bytes = resp.read()
            return 200 <= resp.status < 300 and (expect_body is None or body.strip() == expect_body)
    except (urllib.error.URLError, OSError, ValueError):
        return False


def wait_until(
    proc: ManagedProcess, healthy: Callable[[], bool], *, timeout: float, what: str
) -> None:
    """Poll ``healthy`` until true; fail fast with the log tail if the process exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if healthy():
            return
        if not proc.alive():
            raise StartupError(
                f"{proc.name} exited with code {proc.popen.returncode} before {what}; "
                f"log {proc.log_path}:\n{proc.log_tail()}"
            )
        time.sleep(0.2)
    raise StartupError(
        f"{proc.name} did not become {what} within {timeout:.0f} s; "
        f"log {proc.log_path}:\n{proc.log_tail()}"
    )
