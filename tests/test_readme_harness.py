"""The fork server that runs the README/docs commands (tests/readme_harness): a ``python`` on PATH that forks a
preloaded server must behave like the real interpreter (argv, cwd, env, stdio, exit status, signals), only faster."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tests.readme_harness.forkserver import make_shim_bin, serve


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with serve(["json", "torch", "no_such_module_xyz"], tmp_path_factory.mktemp("forkserver")) as info:
        yield info


def bash(server, script, cwd=None, timeout=60, env=None, **kw):
    return subprocess.run(
        ["bash", "-c", script], env=server.env(env), cwd=cwd, capture_output=True, text=True, timeout=timeout, **kw
    )


def test_code_stdout_stderr_exit_status(server):
    r = bash(server, """python -c 'import sys; print("hi"); print("err", file=sys.stderr); sys.exit(3)'""")
    assert (r.returncode, r.stdout, r.stderr) == (3, "hi\n", "err\n")
    r = bash(server, """python -c 'import sys; sys.exit("a message")'""")
    assert (r.returncode, r.stderr) == (1, "a message\n")


def test_runs_in_a_fork_of_the_preloaded_server(server):
    code = "import sys; print('torch' in sys.modules, 'no_such_module_xyz' in sys.modules, sys.argv, repr(sys.path[0]))"
    r = bash(server, f'python -c "{code}" x; python3 -c "{code}" y')
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["True False ['-c', 'x'] ''", "True False ['-c', 'y'] ''"]


def test_script_argv_cwd_and_env_prefix(server, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    (work / "script.py").write_text(
        textwrap.dedent("""
        import json, os, sys
        print(json.dumps({"argv": sys.argv, "cwd": os.getcwd(), "foo": os.environ.get("FOO"), "path0": sys.path[0],
                          "name": __name__, "file": __file__, "bar": os.environ.get("BAR")}))
        """)
    )
    r = bash(server, "FOO=1 python script.py a b", cwd=work, env=dict(os.environ, BAR="from-env"))
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)
    assert got["argv"] == ["script.py", "a", "b"]
    assert Path(got["cwd"]).resolve() == work.resolve()
    assert got["foo"] == "1" and got["bar"] == "from-env"
    assert Path(got["path0"]).resolve() == work.resolve()
    assert (got["name"], Path(got["file"]).resolve()) == ("__main__", (work / "script.py").resolve())
    r = bash(server, "python missing.py", cwd=work)
    assert r.returncode == 2 and "can't open file" in r.stderr


def test_dash_m_module(server, tmp_path):
    mods = tmp_path / "mods"
    mods.mkdir()
    (mods / "mymod.py").write_text("import sys\nprint(__name__, sys.argv[1:], sys.argv[0].endswith('mymod.py'))\n")
    r = bash(server, f"PYTHONPATH={mods} python -m mymod x y && cd {mods} && python -m mymod z")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["__main__ ['x', 'y'] True", "__main__ ['z'] True"]
    r = bash(server, "python -m no_such_module_xyz")
    assert r.returncode == 1 and "No module named no_such_module_xyz" in r.stderr


def test_uncaught_exception(server, tmp_path):
    (tmp_path / "boom.py").write_text("def f():\n    raise ValueError('boom')\n\nf()\n")
    r = bash(server, "python boom.py", cwd=tmp_path)
    assert r.returncode == 1
    assert r.stderr.startswith("Traceback (most recent call last):\n")
    assert r.stderr.rstrip().endswith("ValueError: boom")
    assert "boom.py" in r.stderr and "forkserver" not in r.stderr  # the command's frames only
    assert r.stdout == ""


def test_for_loop_and_set_e(server):
    script = """
    set -e
    for w in 0 1 2; do python -c 'import sys; print("w", sys.argv[1])' $w; done
    for w in 0 1 2; do python -c 'import sys; print("v", sys.argv[1]); sys.exit(sys.argv[1] == "1")' $w; done
    echo unreachable
    """
    r = bash(server, textwrap.dedent(script))
    assert r.returncode == 1
    assert r.stdout.splitlines() == ["w 0", "w 1", "w 2", "v 0", "v 1"]


def test_stdin_passthrough_and_pipelines_end(server):
    # `| cat` ends only once every copy of the pipe's write end is closed: the server must not keep one
    r = bash(server, """echo abc | python -c 'import sys; print(sys.stdin.read().upper())' | cat""", timeout=30)
    assert (r.returncode, r.stdout) == (0, "ABC\n\n")


def test_sigterm_reaches_the_child(server, tmp_path):
    script = tmp_path / "wait.py"
    script.write_text(
        textwrap.dedent("""
        import pathlib, signal, sys, time
        def handler(signum, frame):
            pathlib.Path(sys.argv[1]).write_text("got %d" % signum)
            sys.exit(0)
        signal.signal(signal.SIGTERM, handler)
        pathlib.Path(sys.argv[2]).write_text("ready")
        time.sleep(60)
        """)
    )
    out, ready = tmp_path / "out", tmp_path / "ready"
    proc = subprocess.Popen([str(server.bin_dir / "python"), str(script), str(out), str(ready)], env=server.env())
    try:
        deadline = time.monotonic() + 30
        while not ready.exists():
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.02)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert out.read_text() == f"got {int(signal.SIGTERM)}"


def test_signal_death_status_as_a_shell_reports_it(server):
    r = bash(server, "python -c 'import os, signal; os.kill(os.getpid(), signal.SIGKILL)'; echo status $?")
    assert r.stdout == "status 137\n"


def test_omp_num_threads_prefix_applies(server):
    r = bash(server, "OMP_NUM_THREADS=1 python -c 'import torch; print(torch.get_num_threads())'")
    assert (r.returncode, r.stdout) == (0, "1\n"), r.stderr


def test_fallbacks_to_a_real_interpreter(server, tmp_path):
    probe = "import sys; print('torch' in sys.modules, sys.flags.optimize)"
    r = bash(server, f'python -O -c "{probe}"')  # an option a fork cannot emulate: a real process runs it
    assert (r.returncode, r.stdout) == (0, "False 1\n"), r.stderr
    # no server behind the socket: the shim execs the real interpreter
    lost = make_shim_bin(tmp_path / "bin", tmp_path / "no.sock", server.real_python)
    env = dict(os.environ, PATH=f"{lost}{os.pathsep}{os.environ['PATH']}")
    r = subprocess.run(["bash", "-c", f'python -c "{probe}"; exit 4'], env=env, capture_output=True, text=True)
    assert (r.returncode, r.stdout) == (4, "False 0\n"), r.stderr


def test_much_faster_than_real_interpreters(server):
    start = time.perf_counter()
    subprocess.run([server.real_python, "-c", "import torch"], check=True)
    real = time.perf_counter() - start
    cmd = 'python -c "import torch; print(torch.zeros(2).sum())"'
    start = time.perf_counter()
    r = bash(server, "\n".join([cmd] * 10))
    shimmed = time.perf_counter() - start
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["tensor(0.)"] * 10
    assert shimmed < 0.5 * 10 * real, (shimmed, real)
    print(f"10 shimmed: {shimmed:.2f} s; one real `import torch`: {real:.2f} s", file=sys.stderr)
