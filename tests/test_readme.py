"""README.md and the docs pages, executed: every command block runs as written, from a temporary copy of the repo.

A page's ```bash blocks run in order, each as one ``bash -e -o pipefail`` script in the copy's root, so a later block
uses what an earlier one made (a run folder, a checkpoint). A block passes when bash exits 0.

What the test changes, all of it (and nothing else):

1. ``SCORELAB_SMOKE=1``: the commands' own smoke mode (README "Smoke runs", ``scorelab.cli.smoke``) caps training
   steps, sample counts and sampler steps, so each command finishes in seconds.
2. Isolation: ``WANDB_MODE=offline``, ``SCORELAB_CACHE`` and ``TORCH_HOME`` in the test's folder, ``SCORELAB_DATA``
   unset (commands read ``./data`` of the copy, where the test puts MNIST, as a user who fetched it would have it).
3. Speed: ``python`` (also the Makefile's ``.venv/bin/python``) is a shim to a fork server that has imported torch and
   Lightning once (``tests/readme_harness``): the same interpreter and code, without ~5 s of imports per command.
4. A command whose comment carries one of the tags in :data:`DRY_TAGS` (``[GPU]``, ``[SLURM]``, ``[download]``,
   ``[CI]``) cannot run here; it runs in its dry form instead (:func:`dry_form`): a Hydra entry point composes its
   config (``--cfg all``, sweeps reduced to their first value), ``torchrun``/``srun`` become plain ``python``,
   ``make X`` becomes ``make -n X``, an argparse command prints its ``--help``.
"""
from __future__ import annotations

import gzip
import os
import re
import shlex
import shutil
import subprocess
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pytest

from .platform_utils import PRELOAD, ROOT

PAGES = ["README.md", *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs").glob("*.md"))]
DRY_TAGS = {"[GPU]": "needs a GPU", "[SLURM]": "needs a SLURM cluster", "[download]": "needs a download",
            "[CI]": "is the test suite itself"}
HYDRA_SCRIPTS = ("train.py", "sample.py", "likelihood.py", "fid.py", "ema.py", "fit_grid.py")
BLOCK_TIMEOUT = 900
SHARED_DATA = Path(os.environ.get("SCORELAB_SHARED_DATA", ROOT.parent / "shared" / "data"))


class Block(NamedTuple):
    """A fenced ```bash block of a page: where it starts and its text."""

    page: str
    line: int
    text: str


def bash_blocks(page: str) -> list[Block]:
    """The ```bash blocks of ``page`` (a path relative to the repository), in order."""
    text = (ROOT / page).read_text()
    blocks = []
    for match in re.finditer(r"^```bash\n(.*?)^```", text, flags=re.S | re.M):
        blocks.append(Block(page, text[:match.start()].count("\n") + 1, match.group(1)))
    return blocks


def logical_lines(text: str) -> list[str]:
    """Lines with backslash continuations joined."""
    out, current = [], ""
    for line in text.splitlines():
        if line.rstrip().endswith("\\") and not line.lstrip().startswith("#"):
            current += line.rstrip()[:-1] + " "
            continue
        out.append(current + line)
        current = ""
    if current:
        out.append(current)
    return out


def _split_comment(line: str) -> tuple[str, str]:
    """``(command, comment)`` of a shell line (a ``#`` outside quotes and after whitespace starts the comment)."""
    quote = None
    for i, ch in enumerate(line):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i].rstrip(), line[i:]
    return line.rstrip(), ""


def _first_values(args: list[str]) -> list[str]:
    """Hydra overrides with each comma sweep reduced to its first value (what one job of the sweep composes)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    out = []
    for arg in args:
        if "=" in arg and not arg.startswith("-"):
            (override,) = OverridesParser.create().parse_overrides([arg])
            if override.is_sweep_override():
                arg = f"{override.get_key_element()}={next(iter(override.sweep_string_iterator()))}"
        out.append(arg)
    return out


def dry_form(command: str) -> str:
    """The command a tagged line runs instead: see the module docstring (item 4)."""
    words = shlex.split(command)
    env = []
    while words and re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", words[0]):
        env.append(words.pop(0))
    if words and words[0] == "srun":
        words.pop(0)
    if words and words[0] == "make":
        return shlex.join([*env, "make", "-n", *words[1:]])
    if words and words[0] == "torchrun":
        script = next(i for i, w in enumerate(words) if w.endswith(".py"))
        words = ["python", *words[script:]]
    if not words or words[0] not in ("python", "python3"):
        raise AssertionError(f"a tagged command must be python, torchrun, srun or make: {command!r}")
    if len(words) > 1 and words[1] == "-m" and words[2] != "torch.distributed.run":
        return shlex.join([*env, "python", "-m", words[2], "--help"])
    script = next((w for w in words[1:] if w.endswith(".py")), None)
    if script is None or Path(script).name not in HYDRA_SCRIPTS:
        return shlex.join([*env, "python", script or words[1], "--help"])
    args = [w for w in words[words.index(script) + 1:] if w not in ("-m", "--multirun")]
    return shlex.join([*env, "python", script, *_first_values(args), "--cfg", "all"])


def runnable(block: Block) -> str:
    """The block's script: tagged commands replaced by their dry form; a placeholder such as ``<run>`` is refused."""
    lines = []
    for line in logical_lines(block.text):
        command, comment = _split_comment(line)
        if re.search(r"<[A-Za-z][^>]*>", command):
            raise AssertionError(f"{block.page}:{block.line}: a placeholder in a command cannot run as written: "
                                 f"{command.strip()!r}; write a real path or value")
        if command.strip() and any(tag in comment for tag in DRY_TAGS):
            indent = command[: len(command) - len(command.lstrip())]
            command = indent + dry_form(command.strip())
        lines.append(command)
    return "\n".join(lines) + "\n"


# --- the copy of the repository ------------------------------------------------------------------------------------
def _write_idx(path: Path, array: np.ndarray) -> None:
    """An MNIST IDX file (gzipped): magic, dimensions, uint8 data."""
    header = (2051 if array.ndim == 3 else 2049).to_bytes(4, "big")
    header += b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def provide_mnist(data_dir: Path) -> str:
    """``data_dir/MNIST/raw``: the real files when the shared data folder has them, else a small synthetic set in the
    same format (digits drawn as noisy strokes), so that the MNIST commands run either way."""
    raw = data_dir / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    real = sorted((SHARED_DATA / "MNIST" / "raw").glob("*.gz"))
    if len(real) == 4:
        for f in real:
            shutil.copy(f, raw / f.name)
        return "real MNIST"
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 2000), ("t10k", 500)):
        labels = rng.integers(0, 10, n)
        images = rng.integers(0, 40, (n, 28, 28))
        for i, label in enumerate(labels):  # a bar whose position is the label: learnable, classifiable
            images[i, 4:24, 2 + 2 * label: 5 + 2 * label] = 255
        _write_idx(raw / f"{prefix}-images-idx3-ubyte.gz", images)
        _write_idx(raw / f"{prefix}-labels-idx1-ubyte.gz", labels)
    return "synthetic MNIST (the shared data folder is absent)"


def copy_repository(dest: Path) -> Path:
    """The repository's files (tracked, and new ones not ignored) copied to ``dest``, as a fresh clone has them."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        source = ROOT / name
        if source.is_file():
            target = dest / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    return dest


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A copy of the repository with MNIST in ``data/``, a fork server, and the environment of the module docstring."""
    from .readme_harness.forkserver import make_shim_bin, serve

    root = tmp_path_factory.mktemp("readme")
    repo = copy_repository(root / "repo")
    note = provide_mnist(repo / "data")
    with serve(PRELOAD, root / "server") as server:
        venv = repo / ".venv"  # the Makefile's interpreter is the shim too; the stamp says it is installed
        make_shim_bin(venv / "bin", server.socket, server.real_python)
        ruff = Path(server.real_python).parent / "ruff"
        if ruff.exists():
            (venv / "bin" / "ruff").symlink_to(ruff)
        (venv / ".installed").touch()
        env = server.env()
        for key in ("SCORELAB_DATA", "SCORELAB_ROOT", "HYDRA_FULL_ERROR", "WANDB_API_KEY"):
            env.pop(key, None)
        env.update(SCORELAB_SMOKE="1", WANDB_MODE="offline", WANDB_SILENT="true",
                   SCORELAB_CACHE=str(root / "cache"), TORCH_HOME=str(root / "torch"),
                   PYTHONDONTWRITEBYTECODE="1")
        print(f"README test workspace {repo} ({note})")
        yield repo, env


def run_block(block: Block, repo: Path, env: dict[str, str]) -> tuple[subprocess.CompletedProcess, float]:
    script = repo.parent / "blocks" / f"{block.page.replace('/', '_')}_{block.line}.sh"
    script.parent.mkdir(exist_ok=True)
    script.write_text(runnable(block))
    began = time.perf_counter()
    res = subprocess.run(["bash", "-e", "-o", "pipefail", str(script)], cwd=repo, env=env, capture_output=True,
                         text=True, timeout=BLOCK_TIMEOUT)
    return res, time.perf_counter() - began


# --- the tests ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("page", [p for p in PAGES if bash_blocks(p)])
def test_every_command_of_the_page_runs_as_written(workspace, page):
    repo, env = workspace
    for block in bash_blocks(page):
        res, seconds = run_block(block, repo, env)
        print(f"{page}:{block.line}: {seconds:.1f} s")
        assert res.returncode == 0, (
            f"{page}:{block.line}: the block failed (exit {res.returncode}):\n{block.text}\n--- output (tail) ---\n"
            f"{(res.stdout + res.stderr)[-4000:]}")


def test_tags_and_dry_forms():
    """The dry forms of tagged commands, and that a placeholder never passes for a command."""
    assert dry_form("torchrun --nproc_per_node=8 sample.py ckpt_path=x.ckpt n_samples=50000") == \
        "python sample.py ckpt_path=x.ckpt n_samples=50000 --cfg all"
    assert dry_form("python train.py -m hydra/launcher=slurm_1x8 sde.beta_max=15,20 ckpt_path=auto") == \
        "python train.py hydra/launcher=slurm_1x8 sde.beta_max=15 ckpt_path=auto --cfg all"
    assert dry_form("srun python train.py trainer=gpu") == "python train.py trainer=gpu --cfg all"
    assert dry_form("make test") == "make -n test"
    assert dry_form("python -m scorelab.convert a.pth --out b.ckpt") == "python -m scorelab.convert --help"
    block = Block("x.md", 1, "python sample.py ckpt_path=<run>/last.ckpt\n")
    with pytest.raises(AssertionError, match="placeholder"):
        runnable(block)
    text = "python train.py \\\n    trainer=gpu   # 1 GPU [GPU]\npython train.py   # here\n"
    assert runnable(Block("x.md", 1, text)) == "python train.py trainer=gpu --cfg all\npython train.py\n"
    assert sum(len(bash_blocks(p)) for p in PAGES) > 20  # the pages do show commands
