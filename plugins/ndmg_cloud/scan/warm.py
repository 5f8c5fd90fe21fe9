"""A warm ``ndmg-lite`` for the local backend: one fork server per machine with DIPY, SciPy
and matplotlib already imported, so a scan does not pay ~1.5 s of imports before its work.

The scan runner (``runner.py``) starts its pipeline through ``start_program``: for
``ndmg-lite`` with ``NDMG_WARM=1`` (the local backend sets it) the server forks a
child that runs ``ndmg_cloud.scan.lite.main`` in its own session, its output streamed back over
the socket; anything else, or a server that cannot be reached, is a plain subprocess. The
child behaves as the subprocess would: same argv, environment and working directory, its
pid's process group can be signalled, and it is killed when the runner goes away. The
server exits after ``IDLE_SECONDS`` with nothing to do. In a Batch container nothing sets
``NDMG_WARM``: there every scan is its own container anyway.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import os
import select
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ndmg_cloud.scan.scrub import pipeline_environment

WARM_ENV = "NDMG_WARM"
WARM_PROGRAMS = ("ndmg-lite",)
IDLE_SECONDS = 120
START_TIMEOUT = 60
EXIT_MARK = "\x00ndmg-warm-exit "
PACKAGE = Path(__file__).resolve().parents[1]  # ndmg_cloud: every module a server may run


def socket_path() -> str:
    """Per user, interpreter and code version (edited code never runs in a stale server), in
    a folder only this user may enter (``OSError`` if it is anyone else's, or open to others:
    no other user can put a server of their own at a name they can guess)."""
    newest = max(p.stat().st_mtime_ns for p in PACKAGE.rglob("*.py"))
    key = hashlib.sha256(f"{sys.executable}|{PACKAGE}|{newest}".encode()).hexdigest()[:12]
    return os.path.join(private_folder(), f"{key}.sock")


def private_folder() -> str:
    folder = os.path.join(tempfile.gettempdir(), f"ndmg-warm-{os.getuid()}")
    with contextlib.suppress(FileExistsError):
        os.mkdir(folder, 0o700)
    found = os.lstat(folder)
    if not stat.S_ISDIR(found.st_mode) or found.st_uid != os.getuid() or found.st_mode & 0o077:
        raise OSError(f"{folder} is not a folder private to this user: the warm server is not used")
    return folder


def _connect(path: str) -> socket.socket | None:
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        client.connect(path)
        return client
    except OSError:
        client.close()
        return None


def ensure_server() -> str | None:
    """The socket of a running warm server, starting one if needed; None if it cannot be
    had (the caller then runs programs as plain subprocesses). The server holds the
    pipeline's environment (``scrub.pipeline_environment``), never the runner's credentials."""
    try:
        path = socket_path()
    except OSError:
        return None
    probe = _connect(path)
    if probe:
        probe.close()
        return path
    try:
        with open(path + ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # one starter at a time
            probe = _connect(path)
            if probe:
                probe.close()
                return path
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)  # a server that died left its socket file
            with open(path + ".log", "ab") as server_log:
                subprocess.Popen(
                    [sys.executable, "-m", "ndmg_cloud.scan.warm", "--socket", path],
                    stdin=subprocess.DEVNULL,
                    stdout=server_log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,  # outlives the task that started it, until idle
                    env={**pipeline_environment(os.environ), "PYTHONWARNINGS": "ignore"},
                )
            deadline = time.monotonic() + START_TIMEOUT
            while time.monotonic() < deadline:
                probe = _connect(path)
                if probe:
                    probe.close()
                    return path
                time.sleep(0.1)
    except OSError:
        pass
    return None


class WarmProcess:
    """The part of ``subprocess.Popen`` the runner uses, for a program forked by the server."""

    def __init__(self, path: str, argv: list[str], env: dict[str, str], cwd: str):
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._socket.connect(path)
        request = {"argv": argv, "env": env, "cwd": cwd}
        self._socket.sendall(json.dumps(request).encode() + b"\n")
        self._stream = self._socket.makefile("r", encoding="utf-8", errors="replace", newline="\n")
        self.pid = int(self._stream.readline())
        self.returncode: int | None = None
        self._reading = False
        self.stdout = self._lines()

    def _lines(self) -> Iterator[str]:
        self._reading = True
        try:
            for line in self._stream:
                if line.startswith(EXIT_MARK):
                    self.returncode = int(line[len(EXIT_MARK) :])
                    break
                yield line
        finally:
            self._reading = False
        if self.returncode is None:  # the server went away mid-run
            self.returncode = -signal.SIGKILL
        self._socket.close()

    def poll(self) -> int | None:
        if self.returncode is None and not _alive(self.pid):
            return -signal.SIGTERM  # gone; its exit mark is still on its way
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        if self._reading:  # from a signal handler, while the runner reads the stream
            while _alive(self.pid):
                if deadline is not None and time.monotonic() > deadline:
                    raise subprocess.TimeoutExpired("ndmg-warm", timeout or 0.0)
                time.sleep(0.05)
            return self.poll() or -signal.SIGTERM  # poll: not None once the pid is gone
        for _ in self.stdout:  # drain what is left
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired("ndmg-warm", timeout or 0.0)
        return self.returncode if self.returncode is not None else -signal.SIGKILL  # set by the drained stream


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def start_program(command: list[str], env: dict[str, str]) -> Any:
    """The runner's way to start its pipeline: warm when it can be, else a subprocess."""
    if env.get(WARM_ENV) == "1" and Path(command[0]).name in WARM_PROGRAMS:
        path = ensure_server()
        try:
            if path:
                return WarmProcess(path, command, env, os.getcwd())
        except (OSError, ValueError):
            pass  # no server after all: the plain way below
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, start_new_session=True)


# --- the server ------------------------------------------------------------------------


def _run_child(connection: socket.socket, request: dict[str, Any], others: list[socket.socket]) -> int:
    """In the forked child: become the program."""
    for other in others:
        other.close()
    os.setsid()
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    for fd in (1, 2):
        os.dup2(connection.fileno(), fd)
    os.write(1, f"{os.getpid()}\n".encode())
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    from ndmg_cloud.scan import lite

    sys.argv = list(request["argv"])
    try:
        code = lite.main(sys.argv[1:])
    except SystemExit as done:
        code = done.code if isinstance(done.code, int) else (0 if done.code is None else 1)
    except BaseException as err:
        print(f"ndmg-lite: {type(err).__name__}: {err}", file=sys.stderr)
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    return code


def _read_request(connection: socket.socket) -> dict[str, Any] | None:
    connection.settimeout(10)
    try:
        with connection.makefile("r", encoding="utf-8") as request_line:
            request = json.loads(request_line.readline() or "null")
    except (OSError, ValueError):
        return None
    connection.settimeout(None)
    if not isinstance(request, dict) or not {"argv", "env", "cwd"} <= set(request):
        return None
    return request


def serve(path: str, idle_seconds: float = IDLE_SECONDS) -> None:
    from ndmg_cloud.scan import lite

    lite.preload()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    previous = os.umask(0o177)  # only this user may connect: requests name env and argv
    try:
        listener.bind(path)
    finally:
        os.umask(previous)
    listener.listen(64)
    children: dict[int, socket.socket] = {}
    last_busy = time.monotonic()
    try:
        while children or time.monotonic() - last_busy < idle_seconds:
            readable, _, _ = select.select([listener, *children.values()], [], [], 0.5)
            for ready in readable:
                if ready is listener:
                    connection, _ = listener.accept()
                    request = _read_request(connection)
                    if request is None:  # a probe (ensure_server) or a broken client
                        connection.close()
                        continue
                    pid = os.fork()
                    if pid == 0:
                        listener.close()
                        os._exit(_run_child(connection, request, list(children.values())))
                    children[pid] = connection
                elif not ready.recv(1, socket.MSG_PEEK):  # the runner went away: stop its program
                    pid = next(p for p, c in children.items() if c is ready)
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(pid, signal.SIGKILL)
            for pid in list(children):
                done, status = os.waitpid(pid, os.WNOHANG)
                if done:
                    connection = children.pop(pid)
                    with contextlib.suppress(OSError):
                        connection.sendall(f"{EXIT_MARK}{os.waitstatus_to_exitcode(status)}\n".encode())
                    connection.close()
                    last_busy = time.monotonic()
    finally:
        listener.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ndmg-warm", description=__doc__.split("\n\n")[0])
    parser.add_argument("--socket", required=True, help="Unix socket path to serve on")
    parser.add_argument("--idle-seconds", type=float, default=IDLE_SECONDS, help="exit after this long with nothing to do")
    args = parser.parse_args(argv)
    serve(args.socket, args.idle_seconds)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
