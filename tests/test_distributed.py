"""Process-group helpers: index shards, one gather that carries errors, one Hydra run folder per torchrun job."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from scorelab.core import distributed

from .platform_utils import ROOT


@pytest.mark.parametrize("n, world", [(10, 3), (2, 4), (0, 2), (7, 1)])
def test_shards_partition_the_indices(n, world):
    shards = [distributed.shard(n, rank=r, world=world) for r in range(world)]
    assert sorted(i for s in shards for i in s) == list(range(n))
    assert all(s == sorted(s) for s in shards)
    with pytest.raises(ValueError, match="rank"):
        distributed.shard(n, rank=world, world=world)


def test_single_process_helpers_need_no_group(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.delenv("RANK", raising=False)
    import torch

    with distributed.process_group(torch.device("cpu")) as multi:
        assert multi is False
        assert distributed.world_size() == 1 and distributed.rank() == 0 and distributed.is_main_process()
        assert distributed.run_and_gather(lambda a, b: a + b, 2, b=3) == [5]
        with pytest.raises(KeyError):
            distributed.run_and_gather(lambda: {}["missing"])


def test_only_rank_zero_gets_a_hydra_run_folder(monkeypatch, tmp_path):
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr("tempfile.tempdir", None)  # re-read TMPDIR
    monkeypatch.setenv("WORLD_SIZE", "2")
    for rank, expect_override in (("0", False), ("1", True)):
        monkeypatch.setenv("RANK", rank)
        argv = ["likelihood.py", "n=3"]
        with distributed.hydra_run_folder_on_rank_zero(argv):
            folders = list(tmp_path.glob("scorelab-rank*"))
            assert any(a.startswith("hydra.run.dir=") for a in argv) == expect_override
            assert ("hydra.output_subdir=null" in argv) == expect_override and len(folders) == int(expect_override)
        assert not list(tmp_path.glob("scorelab-rank*"))  # removed on exit


WORKER = textwrap.dedent("""
    import torch
    from scorelab.core import distributed

    def solve(items):
        if distributed.rank() == 1:
            raise ValueError("rank one broke")
        return [i * i for i in items]

    with distributed.process_group(torch.device("cpu")):
        try:
            distributed.run_and_gather(solve, distributed.shard(5))
        except Exception as exc:  # both ranks must get here: the healthy one does not wait forever
            print(f"rank {distributed.rank()} raised {type(exc).__name__}: {exc}", flush=True)
        print(f"rank {distributed.rank()} gathered {distributed.gather(distributed.shard(5))}", flush=True)
""")


def test_a_failing_rank_makes_every_rank_raise_instead_of_hanging(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = dict(os.environ, OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]))
    res = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          str(script)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "rank 1 raised ValueError: rank one broke" in res.stdout
    assert "rank 0 raised RankFailedError: rank 1 failed: ValueError: rank one broke" in res.stdout
    assert "rank 0 gathered [[0, 2, 4], [1, 3]]" in res.stdout
