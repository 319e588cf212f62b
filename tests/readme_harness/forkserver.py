"""A "nailgun"-style fork server: run many ``python ...`` commands without paying for ``import torch, lightning``
in each one.

The server imports the heavy modules once, then listens on a Unix socket. Each ``python`` a shell runs is the small
client ``shim.py`` (written onto PATH by :func:`make_shim_bin`): it sends its argv, cwd, umask, environment and its
fds 0, 1, 2 (SCM_RIGHTS); the server forks a child that takes those over and emulates the command line:

* ``python script.py ARGS`` -> ``sys.argv = ["script.py", *ARGS]``, ``sys.path[0]`` = the script's folder, the file
  run as ``__main__`` (a folder or zip file: :func:`runpy.run_path`);
* ``python -m MODULE ARGS`` -> ``sys.path[0]`` = cwd, ``runpy._run_module_as_main`` (``sys.argv[0]`` = the file);
* ``python -c CODE ARGS`` -> ``sys.argv = ["-c", *ARGS]``, ``sys.path[0] = ""``, the code run in a fresh ``__main__``;
* anything else (``-u``, ``-X``, ``-W``, ``-O``, ``-``, no argument at all) or an environment that changes how the
  interpreter starts (``PYTHONOPTIMIZE``, ``PYTHONWARNINGS``, ``PYTHONHASHSEED``, ... set differently from the
  server's) -> the child execs the real interpreter: correct, only as slow as a real process.

The child's exit follows CPython's: ``SystemExit`` (None -> 0, an int -> it, anything else printed -> 1), an uncaught
exception -> traceback and 1, ``KeyboardInterrupt`` -> traceback and death by SIGINT; non-daemon threads are joined
and ``atexit`` functions run before ``os._exit``. The server sends the client ``{"pid": N}`` once the child exists and
``{"status": S, "signal": K}`` when it ends (a signal death: S = 128 + K, as a shell reports it).

The server is one thread (forking from a process with other Python threads can inherit a held lock): an event loop
over the listening socket, the client connections (a client that goes away has its child killed) and a wake-up pipe
for SIGCHLD/SIGTERM. It runs no torch operation, so no OpenMP pool exists when it forks. It exits on SIGTERM or
SIGINT, or when its parent dies, and removes its socket.

Use from tests::

    with serve(["torch", "lightning", "scorelab.cli.train"], tmp_path) as server:
        subprocess.run(["bash", "-c", "python train.py ..."], env=server.env(), cwd=repo_copy)

Run by hand: ``python tests/readme_harness/forkserver.py --socket /tmp/fs.sock --preload torch,lightning`` (or
``python -m tests.readme_harness.forkserver ...`` from the repository root), then ``make_shim_bin`` for the shims.
"""

from __future__ import annotations

import argparse
import atexit
import builtins
import contextlib
import gc
import importlib
import importlib.machinery
import io
import json
import os
import runpy
import selectors
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import types
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
SHIM = HERE / "shim.py"

# Environment variables that change how the interpreter itself starts: a command whose value differs from the
# server's cannot be emulated in a fork of it and runs in a real interpreter instead.
_STARTUP_ENV = (
    "PYTHONOPTIMIZE", "PYTHONWARNINGS", "PYTHONHASHSEED", "PYTHONDEVMODE", "PYTHONUTF8", "PYTHONFAULTHANDLER",
    "PYTHONTRACEMALLOC", "PYTHONHOME", "PYTHONNOUSERSITE", "PYTHONUSERBASE", "PYTHONSAFEPATH", "PYTHONINSPECT",
    "PYTHONMALLOC", "PYTHONPLATLIBDIR", "PYTHONCASEOK", "PYTHONVERBOSE", "PYTHONDEBUG", "PYTHONINTMAXSTRDIGITS",
    "PYTHONNODEBUGRANGES", "PYTHONPYCACHEPREFIX", "PYTHONCOERCECLOCALE", "PYTHONPROFILEIMPORTTIME",
    "PYTHONEXECUTABLE",
)  # fmt: skip
# Read by libgomp/MKL when torch is imported, not later: the child applies them with torch.set_num_threads.
_THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")
_MAX_REQUEST = 64 << 20


# ----------------------------------------------------------------------------------------------------------- server


class _Server:
    def __init__(self, socket_path: str, real_python: str, parent_pid: int | None):
        self.socket_path = socket_path
        self.real_python = real_python
        self.parent_pid = parent_pid if parent_pid is not None else os.getppid()
        self.stopping = False
        self.children: dict[int, socket.socket] = {}  # child pid -> its client's connection
        self.env = dict(os.environ)
        self.base_path = _base_sys_path(self.env)
        self.harness_modules = _harness_modules()

    # -- setup / teardown
    def run(self) -> None:
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_r, False)
        os.set_blocking(self.wake_w, False)
        signal.set_wakeup_fd(self.wake_w, warn_on_full_buffer=False)
        signal.signal(signal.SIGCHLD, lambda *_: None)  # a Python handler, so the wake-up fd hears of it
        signal.signal(signal.SIGTERM, self._on_stop)
        signal.signal(signal.SIGINT, self._on_stop)
        signal.signal(signal.SIGHUP, self._on_stop)

        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        tmp = f"{self.socket_path}.{os.getpid()}.tmp"
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        self.listener.bind(tmp)
        self.listener.listen(128)
        os.replace(tmp, self.socket_path)  # the socket appears only once it accepts connections
        self.socket_ino = os.stat(self.socket_path).st_ino
        self.selector = selectors.DefaultSelector()
        self.selector.register(self.listener, selectors.EVENT_READ, "listen")
        self.selector.register(self.wake_r, selectors.EVENT_READ, "wake")
        try:
            self._loop()
        finally:
            self._shutdown()

    def _on_stop(self, signum, frame) -> None:
        self.stopping = True

    def _shutdown(self) -> None:
        with contextlib.suppress(OSError):
            if os.stat(self.socket_path).st_ino == self.socket_ino:  # still ours, not a newer server's
                os.unlink(self.socket_path)
        self.listener.close()
        for pid in list(self.children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 3.0
        while self.children and time.monotonic() < deadline:
            self._reap()
            time.sleep(0.02)
        for pid in list(self.children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        while self.children:
            pid, status = os.waitpid(next(iter(self.children)), 0)
            self._finished(pid, status)

    # -- event loop
    def _loop(self) -> None:
        while not self.stopping:
            if os.getppid() != self.parent_pid:
                break
            for key, _ in self.selector.select(timeout=1.0):
                if key.data == "listen":
                    self._accept()
                elif key.data == "wake":
                    with contextlib.suppress(BlockingIOError):
                        while os.read(self.wake_r, 512):
                            pass
                else:
                    self._client_readable(key.fileobj, key.data)
            self._reap()

    def _accept(self) -> None:
        try:
            conn, _ = self.listener.accept()
        except OSError:
            return
        fds: list[int] = []
        try:
            conn.settimeout(10.0)
            request, fds = _read_request(conn)
            if len(fds) != 3:
                raise ValueError(f"expected fds 0, 1, 2, got {len(fds)}")
            pid = self._fork(conn, request, fds)
        except Exception as e:
            for fd in fds:
                os.close(fd)
            with contextlib.suppress(OSError):
                conn.sendall((json.dumps({"error": repr(e)}) + "\n").encode())
            conn.close()
            return
        for fd in fds:
            os.close(fd)  # only the child holds them now: a pipe's reader sees EOF when the command ends
        self.children[pid] = conn
        try:
            conn.settimeout(None)
            conn.sendall((json.dumps({"pid": pid}) + "\n").encode())
            self.selector.register(conn, selectors.EVENT_READ, pid)
        except OSError:  # the client is gone already
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def _client_readable(self, conn: socket.socket, pid: int) -> None:
        try:
            data = conn.recv(4096)
        except OSError:
            data = b""
        if not data:  # the client died (it would have forwarded a catchable signal): end its command too
            self.selector.unregister(conn)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            self._finished(pid, status)

    def _finished(self, pid: int, status: int) -> None:
        conn = self.children.pop(pid, None)
        if conn is None:
            return
        code = os.waitstatus_to_exitcode(status)
        sig = -code if code < 0 else None
        with contextlib.suppress(KeyError, ValueError):
            self.selector.unregister(conn)
        with contextlib.suppress(OSError):
            conn.sendall((json.dumps({"status": 128 + sig if sig else code, "signal": sig}) + "\n").encode())
        conn.close()

    # -- fork
    def _fork(self, conn: socket.socket, request: dict, fds: list[int]) -> int:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        blocked = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGCHLD}
        old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, blocked)
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                code = self._child(conn, request, fds, old_mask)
            except BaseException:  # a fault of the harness itself: never return into the server's loop
                with contextlib.suppress(BaseException):
                    traceback.print_exc()
            finally:
                os._exit(code)
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
        return pid

    def _child(self, conn: socket.socket, request: dict, fds: list[int], old_mask) -> int:
        # Signals: as a fresh interpreter has them (and those the client's shell ignores stay ignored).
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGHUP, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        for signum in request.get("ignored_signals", ()):
            signal.signal(signum, signal.SIG_IGN)
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
        # The server's own fds.
        self.selector.close()
        self.listener.close()
        for other in self.children.values():
            other.close()
        conn.close()
        os.close(self.wake_r)
        os.close(self.wake_w)
        # The client's stdio.
        fds = [fd if fd > 2 else _dup_high(fd) for fd in fds]
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
            os.close(fd)

        argv = [str(a) for a in request["argv"]]
        env = {str(k): str(v) for k, v in request["env"].items()}
        os.chdir(request["cwd"])
        if "umask" in request:
            os.umask(int(request["umask"]))
        mode = _classify(argv)
        if mode is None or any(env.get(k) != self.env.get(k) for k in _STARTUP_ENV):
            return self._exec_real(argv, env)

        os.environ.clear()
        os.environ.update(env)
        old_stdio = _install_stdio(env)
        sys.dont_write_bytecode = bool(env.get("PYTHONDONTWRITEBYTECODE"))
        sys.orig_argv = list(argv)
        for name in self.harness_modules:
            sys.modules.pop(name, None)
        importlib.invalidate_caches()
        self._apply_thread_env(env)
        _reseed()
        code = _run(mode, self._child_path(env), self.real_python)
        return _finish(code, old_stdio)

    def _exec_real(self, argv: list[str], env: dict[str, str]) -> int:
        try:
            os.execve(self.real_python, [self.real_python, *argv[1:]], env)
        except OSError as e:
            print(f"forkserver: cannot exec {self.real_python}: {e}", file=sys.stderr)
        return 127

    def _child_path(self, env: dict[str, str]) -> list[str]:
        return _pythonpath(env.get("PYTHONPATH", ""), os.getcwd()) + self.base_path

    def _apply_thread_env(self, env: dict[str, str]) -> None:
        torch = sys.modules.get("torch")
        if torch is None or all(env.get(k) == self.env.get(k) for k in _THREAD_ENV):
            return
        n = 0
        for key in _THREAD_ENV:  # as ATen's intraop_default_num_threads: MKL_NUM_THREADS wins over OMP_NUM_THREADS
            try:
                value = int(env.get(key, ""))
            except ValueError:
                continue
            if value > 0:
                n = value
        try:
            torch.set_num_threads(n if n > 0 else len(os.sched_getaffinity(0)))
        except Exception as e:
            print(f"forkserver: could not apply {_THREAD_ENV}: {e}", file=sys.stderr)


def _dup_high(fd: int) -> int:
    import fcntl

    return fcntl.fcntl(fd, fcntl.F_DUPFD, 3)


def _read_request(conn: socket.socket) -> tuple[dict, list[int]]:
    data, fds, _, _ = socket.recv_fds(conn, 1 << 16, 3)
    if len(data) < 4 and data:
        data += conn.recv(4 - len(data), socket.MSG_WAITALL)
    if len(data) < 4:
        raise ValueError("short request")
    size = int.from_bytes(data[:4], "big")
    if size > _MAX_REQUEST:
        raise ValueError("request too large")
    body = bytearray(data[4:])
    while len(body) < size:
        chunk = conn.recv(min(1 << 20, size - len(body)))
        if not chunk:
            raise ValueError("truncated request")
        body += chunk
    request = json.loads(bytes(body))
    if not isinstance(request.get("argv"), list) or not request["argv"]:
        raise ValueError("request without argv")
    return request, list(fds)


def _pythonpath(value: str, cwd: str) -> list[str]:
    """sys.path entries an interpreter started in ``cwd`` gets from PYTHONPATH (3.11 makes them absolute)."""
    if not value:
        return []
    return [os.path.normpath(os.path.join(cwd, p)) if p else cwd for p in value.split(os.pathsep)]


def _base_sys_path(env: dict[str, str]) -> list[str]:
    """The server's sys.path less its sys.path[0] and its PYTHONPATH entries: what every command starts from."""
    rest = list(sys.path[1:])
    own = _pythonpath(env.get("PYTHONPATH", ""), os.getcwd())
    if own and rest[: len(own)] == own:
        rest = rest[len(own) :]
    return rest


def _harness_modules() -> list[str]:
    """Run as ``-m tests.readme_harness.forkserver``: the package modules that came with it, dropped in children."""
    spec = globals().get("__spec__")
    if __name__ != "__main__" or spec is None or not spec.name:
        return []
    root = spec.name.split(".")[0]
    return [m for m in sys.modules if m == root or m.startswith(root + ".")]


# ------------------------------------------------------------------------------------------------------------ child


def _classify(argv: list[str]) -> tuple[str, str, list[str]] | None:
    """("script"|"module"|"code", target, args) for a command line the child can emulate, else None."""
    args = argv[1:]
    if not args:
        return None
    first = args[0]
    if first in ("-c", "-m"):
        if len(args) < 2:
            return None
        return ("code" if first == "-c" else "module", args[1], args[2:])
    if first[:2] in ("-c", "-m") and len(first) > 2:  # python -c'print(1)' / python -mpkg
        return ("code" if first[1] == "c" else "module", first[2:], args[1:])
    if first.startswith("-"):
        return None
    return ("script", first, args[1:])


def _install_stdio(env: dict[str, str]) -> tuple:
    """Fresh sys.stdin/stdout/stderr on fds 0, 1, 2 (now the client's), configured as CPython would."""
    old = (sys.stdin, sys.stdout, sys.stderr, sys.__stdin__, sys.__stdout__, sys.__stderr__)
    encoding = getattr(sys.__stdout__, "encoding", None) or "utf-8"
    errors = getattr(sys.__stdout__, "errors", None) or "strict"
    override = env.get("PYTHONIOENCODING")
    if override:
        enc, _, err = override.partition(":")
        encoding, errors = enc or encoding, err or errors
    unbuffered = bool(env.get("PYTHONUNBUFFERED"))

    def stream(fd, name, mode, errs):
        if mode == "r":
            buffer = open(fd, "rb", closefd=False)
        else:
            buffer = open(fd, "wb", buffering=0 if unbuffered else -1, closefd=False)
        raw = getattr(buffer, "raw", buffer)
        with contextlib.suppress(AttributeError):
            raw.name = name
        return io.TextIOWrapper(
            buffer, encoding=encoding, errors=errs, line_buffering=mode == "w" and not unbuffered,
            write_through=mode == "w" and unbuffered,
        )  # fmt: skip

    sys.stdin = sys.__stdin__ = stream(0, "<stdin>", "r", errors)
    sys.stdout = sys.__stdout__ = stream(1, "<stdout>", "w", errors)
    sys.stderr = sys.__stderr__ = stream(2, "<stderr>", "w", "backslashreplace")
    return old


def _reseed() -> None:
    """Fresh random state, as a new process has (``random`` reseeds itself after fork; numpy does not)."""
    np = sys.modules.get("numpy")
    if np is not None:
        with contextlib.suppress(Exception):
            np.random.seed()


def _fresh_main() -> types.ModuleType:
    main = types.ModuleType("__main__")
    main.__builtins__ = builtins
    sys.modules["__main__"] = main
    return main


def _run(mode: tuple[str, str, list[str]], path: list[str], real_python: str) -> int | BaseException:
    """Run the command; its exit code, or the exception that ended it (a KeyboardInterrupt)."""
    kind, target, args = mode
    try:
        if kind == "code":
            sys.argv = ["-c", *args]
            sys.path[:] = ["", *path]
            main = _fresh_main()
            main.__loader__ = importlib.machinery.BuiltinImporter
            exec(compile(target, "<string>", "exec"), main.__dict__)
        elif kind == "module":
            sys.argv = ["-m", *args]
            sys.path[:] = [os.getcwd(), *path]
            _fresh_main()
            for name in (target, target + ".__main__"):  # a preloaded copy: let runpy run the module afresh
                sys.modules.pop(name, None)
            runner = getattr(runpy, "_run_module_as_main", None)
            if runner is not None:
                runner(target, True)
            else:  # pragma: no cover - every CPython 3 has it
                runpy.run_module(target, run_name="__main__", alter_sys=True)
        else:
            script = os.path.abspath(target)
            sys.argv = [target, *args]
            if os.path.isdir(script) or not script.endswith(".py") and _is_zip(script):
                sys.path[:] = path  # run_path puts the folder/zip first
                runpy.run_path(script, run_name="__main__")
                return 0
            try:
                with io.open_code(script) as f:
                    source = f.read()
            except OSError as e:
                print(f"{real_python}: can't open file {script!r}: [Errno {e.errno}] {e.strerror}", file=sys.stderr)
                return 2
            sys.path[:] = [os.path.dirname(os.path.realpath(script)), *path]
            main = _fresh_main()
            main.__file__ = script
            main.__cached__ = None
            main.__loader__ = importlib.machinery.SourceFileLoader("__main__", script)
            exec(compile(source, script, "exec"), main.__dict__)
        return 0
    except SystemExit as e:
        return _system_exit_code(e)
    except KeyboardInterrupt as e:
        _print_uncaught(e)
        return e
    except BaseException as e:
        _print_uncaught(e)
        return 1


def _is_zip(path: str) -> bool:
    import zipfile

    return zipfile.is_zipfile(path)


def _system_exit_code(e: SystemExit) -> int:
    code = e.code
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    with contextlib.suppress(Exception):
        print(code, file=sys.stderr)
    return 1


def _print_uncaught(e: BaseException) -> None:
    """The traceback, from the command's own first frame on (the harness and runpy frames left out)."""
    skip = {__file__, getattr(runpy, "__file__", None), "<frozen runpy>"}
    tb = e.__traceback__
    while tb is not None and tb.tb_next is not None and tb.tb_frame.f_code.co_filename in skip:
        tb = tb.tb_next
    e.__traceback__ = tb  # the default hook prints the exception's own traceback, whatever it is passed
    try:
        sys.excepthook(type(e), e, tb)
    except BaseException:
        traceback.print_exception(type(e), e, tb)


def _finish(code: int | BaseException, old_stdio: tuple) -> int:
    """What CPython does on the way out: join non-daemon threads, atexit, collect, flush; the exit status."""
    with contextlib.suppress(BaseException):
        threading._shutdown()
    with contextlib.suppress(BaseException):
        atexit._run_exitfuncs()
    sys.modules["__main__"] = types.ModuleType("__main__")  # drop the command's namespace: its open files flush
    with contextlib.suppress(BaseException):
        gc.collect()
    for stream in (sys.stdout, sys.stderr, *old_stdio):
        try:
            stream.flush()
        except BaseException:
            if stream is sys.stdout and code == 0:
                code = 120  # as CPython: stdout could not be flushed
    if isinstance(code, KeyboardInterrupt):
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)
        return 130
    return code


def _preload(names: list[str]) -> None:
    for name in names:
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name and (name == e.name or name.startswith(e.name + ".")):
                continue  # not installed / not in this checkout: skipped silently
            print(f"forkserver: preloading {name} failed: {e!r}", file=sys.stderr)
        except (Exception, SystemExit) as e:
            print(f"forkserver: preloading {name} failed: {e!r}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--socket", required=True, help="Unix socket path to listen on")
    parser.add_argument("--preload", action="append", default=[], help="comma-separated modules to import")
    parser.add_argument("--real-python", default=sys.executable, help="interpreter for commands it cannot emulate")
    parser.add_argument("--parent-pid", type=int, default=None, help="exit when this is no longer the parent")
    args = parser.parse_args(argv)
    server = _Server(os.path.abspath(args.socket), args.real_python, args.parent_pid)
    _preload([m.strip() for group in args.preload for m in group.split(",") if m.strip()])
    gc.collect()
    gc.freeze()  # the children's collections skip everything preloaded
    server.run()
    return 0


# ----------------------------------------------------------------------------------------------------- test helpers


def make_shim_bin(folder: Path, socket_path: str | os.PathLike, real_python: str | os.PathLike) -> Path:
    """``folder/python`` and ``folder/python3``: shell scripts that run ``shim.py`` against ``socket_path``.

    The shim runs on ``real_python -S -I`` (no site, no PYTHON* variables, no script folder on sys.path: ~20 ms);
    the socket and the real interpreter are written into the scripts, so the command's own environment needs nothing.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    real = os.fspath(real_python)
    text = (
        "#!/bin/sh\n"
        f"SCORELAB_FORKSERVER={shlex.quote(os.fspath(socket_path))}\n"
        f"SCORELAB_REAL_PYTHON={shlex.quote(real)}\n"
        "export SCORELAB_FORKSERVER SCORELAB_REAL_PYTHON\n"
        f'exec {shlex.quote(real)} -S -I {shlex.quote(str(SHIM))} "$@"\n'
    )
    for name in ("python", "python3"):
        path = folder / name
        path.write_text(text)
        path.chmod(0o755)
    return folder


@dataclass(frozen=True)
class ServerInfo:
    socket: Path
    bin_dir: Path
    real_python: str
    pid: int
    log: Path

    def env(self, base: dict[str, str] | None = None) -> dict[str, str]:
        """``base`` (default: os.environ) with the shims first on PATH."""
        env = dict(os.environ if base is None else base)
        env["PATH"] = os.pathsep.join([str(self.bin_dir), *filter(None, [env.get("PATH")])])
        return env


@contextlib.contextmanager
def serve(
    preload: list[str],
    workdir: Path,
    *,
    real_python: str | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 120.0,
) -> Iterator[ServerInfo]:
    """Start a fork server preloading ``preload``; yield its socket, shim folder (``workdir/bin``) and interpreter.

    ``real_python`` defaults to this interpreter (keep the venv path unresolved: the venv is found from it). The
    server's log (its stdout and stderr) is ``workdir/forkserver.log``; it is stopped (SIGTERM) on exit.
    """
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    real = real_python or sys.executable
    sock_dir = None
    sock = workdir / "forkserver.sock"
    if len(os.fsencode(str(sock.absolute()))) > 100:  # AF_UNIX paths are limited to 108 bytes
        sock_dir = tempfile.mkdtemp(prefix="slfs-")
        sock = Path(sock_dir) / "s"
    sock = sock.absolute()
    server_env = dict(os.environ if env is None else env)
    for key in (*_THREAD_ENV, "SCORELAB_FORKSERVER", "SCORELAB_REAL_PYTHON"):
        server_env.pop(key, None)  # the server imports torch with the default thread count; commands set theirs
    log = workdir / "forkserver.log"
    cmd = [
        real, str(HERE / "forkserver.py"), "--socket", str(sock), "--preload", ",".join(preload),
        "--real-python", real, "--parent-pid", str(os.getpid()),
    ]  # fmt: skip
    with open(log, "wb") as log_file:
        proc = subprocess.Popen(cmd, cwd=workdir, env=server_env, stdin=subprocess.DEVNULL, stdout=log_file,
                                stderr=subprocess.STDOUT)  # fmt: skip
    try:
        deadline = time.monotonic() + timeout
        while not sock.exists():
            if proc.poll() is not None:
                raise RuntimeError(f"fork server exited with {proc.returncode}:\n{log.read_text(errors='replace')}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"fork server not ready after {timeout:.0f} s:\n{log.read_text(errors='replace')}")
            time.sleep(0.02)
        bin_dir = make_shim_bin(workdir / "bin", sock, real)
        yield ServerInfo(socket=sock, bin_dir=bin_dir, real_python=real, pid=proc.pid, log=log)
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if sock_dir is not None:
            shutil.rmtree(sock_dir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
