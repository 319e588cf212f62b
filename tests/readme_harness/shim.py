"""The ``python`` stand-in that runs a command in a child forked by the fork server (see ``forkserver.py``).

Started as ``<real python> -S -I shim.py ARGS...`` by the ``python``/``python3`` scripts that
``forkserver.make_shim_bin`` writes, so it starts in a few milliseconds: it imports only the standard modules below.
It sends ``["python", *ARGS]``, its cwd, umask, environment and its fds 0, 1, 2 to the server named by
``$SCORELAB_FORKSERVER``, forwards the signals it gets to the child, and exits as the child did. Where there is no
server (no socket, refused, an fd 0-2 closed) it execs the real interpreter (``$SCORELAB_REAL_PYTHON``) instead: the
command still runs correctly, only slower.
"""

import json
import os
import signal
import socket
import sys

# Signals the shim passes on to the child while it runs.
_FORWARDED = ("SIGINT", "SIGTERM", "SIGHUP", "SIGQUIT", "SIGUSR1", "SIGUSR2")
# A child killed by one of these: the shim kills itself with the same signal, so a shell sees exactly what it would
# see for a real process (bash treats a command that died of SIGINT specially). Others (core-dumping ones): 128 + n.
_SELF_KILL = ("SIGINT", "SIGTERM", "SIGHUP", "SIGKILL", "SIGPIPE", "SIGUSR1", "SIGUSR2", "SIGALRM")
# The shim's own settings; not part of the command's environment.
_PRIVATE = ("SCORELAB_FORKSERVER", "SCORELAB_REAL_PYTHON")

_pid = None
_pending = []


def _on_signal(signum, frame):
    if _pid is None:
        _pending.append(signum)
        return
    try:
        os.kill(_pid, signum)
    except ProcessLookupError:
        pass


def _die_of(signum):
    """End this process the way a process killed by ``signum`` ends (or with 128 + signum)."""
    name = signal.Signals(signum).name if signum in signal.valid_signals() else ""
    if name in _SELF_KILL:
        if signum != signal.SIGKILL:
            signal.signal(signum, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signum})
        os.kill(os.getpid(), signum)
    os._exit(128 + signum)


def _exec_real_python(args, env):
    real = os.environ.get("SCORELAB_REAL_PYTHON")
    for signum in _pending:  # a signal that came before the command started: it ends the command
        _die_of(signum)
    if not real:
        sys.stderr.write("python shim: no server and no $SCORELAB_REAL_PYTHON to fall back to\n")
        os._exit(127)
    try:
        os.execve(real, [real, *args], env)
    except OSError as e:
        sys.stderr.write(f"python shim: cannot exec {real}: {e}\n")
        os._exit(127)


def _request(path, args, env, ignored):
    """Connect and send the request; the connected socket, or None where there is no server to ask."""
    if not path:
        return None
    try:
        for fd in (0, 1, 2):
            os.fstat(fd)
        cwd = os.getcwd()
    except OSError:
        return None
    mask = os.umask(0)
    os.umask(mask)
    body = json.dumps(
        {"argv": ["python", *args], "cwd": cwd, "env": env, "umask": mask, "ignored_signals": ignored}
    ).encode()
    msg = len(body).to_bytes(4, "big") + body
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(path)
        sent = socket.send_fds(sock, [msg], [0, 1, 2])
        if sent < len(msg):
            sock.sendall(msg[sent:])
    except OSError:
        sock.close()
        return None
    return sock


class _Lines:
    def __init__(self, sock):
        self.sock = sock
        self.buf = b""

    def next(self):
        """The next JSON message from the server, or None at end of stream."""
        while b"\n" not in self.buf:
            try:
                chunk = self.sock.recv(4096)
            except OSError:
                return None
            if not chunk:
                return None
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return json.loads(line)


def main():
    global _pid
    args = sys.argv[1:]
    env = {k: v for k, v in os.environ.items() if k not in _PRIVATE}
    ignored = []
    for name in _FORWARDED:
        signum = getattr(signal, name)
        if signal.getsignal(signum) == signal.SIG_IGN:  # e.g. SIGINT for a `cmd &` of a non-interactive shell
            ignored.append(signum)
        else:
            signal.signal(signum, _on_signal)

    sock = _request(os.environ.get("SCORELAB_FORKSERVER"), args, env, ignored)
    if sock is None:
        _exec_real_python(args, env)
    lines = _Lines(sock)
    first = lines.next()
    if not first or "pid" not in first:  # refused (or gone) before anything ran
        sock.close()
        _exec_real_python(args, env)
    _pid = first["pid"]
    for signum in _pending:
        _on_signal(signum, None)
    _pending.clear()

    end = lines.next()
    if not end or "status" not in end:
        sys.stderr.write(f"python shim: lost the fork server while pid {_pid} ran\n")
        os._exit(255)
    if end.get("signal"):
        _die_of(end["signal"])
    os._exit(end["status"] & 0xFF)


if __name__ == "__main__":
    main()
