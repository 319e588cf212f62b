"""Files other people wrote must never run code: hostile checkpoints are refused before anything in them runs."""
from __future__ import annotations

import pathlib

import pytest
import torch
from omegaconf import OmegaConf

from scorelab.cli.common import check_stored_targets, load_checkpoint
from scorelab.errors import UnsafeFileError
from scorelab.io import load_torch_file

from .platform_utils import make_cfg, run_script


class _TouchOnUnpickle:
    """Unpickling this object creates ``marker``: the classic pickle payload, made harmless and observable."""

    def __init__(self, marker: pathlib.Path):
        self.marker = marker

    def __reduce__(self):
        return pathlib.Path.touch, (self.marker,)


def _stored_config(tmp_path) -> dict:
    cfg = make_cfg(tmp_path, ["model.net.width=8", "model.net.depth=1"])
    return OmegaConf.to_container(cfg, resolve=True)


@pytest.fixture
def pickle_bomb(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "hostile.ckpt"
    torch.save({"state_dict": {}, "payload": _TouchOnUnpickle(marker)}, path)
    assert not marker.exists()
    return path, marker


def test_pickle_payload_is_refused_by_the_loader(pickle_bomb):
    path, marker = pickle_bomb
    with pytest.raises(UnsafeFileError, match=r"refused to load checkpoint .*Python object .*could run code"):
        load_torch_file(path, "checkpoint")
    with pytest.raises(UnsafeFileError):
        load_checkpoint(str(path))
    assert not marker.exists()


@pytest.mark.parametrize("script", ["sample.py", "train.py"])
def test_pickle_payload_is_refused_by_the_commands(tmp_path, pickle_bomb, script):
    path, marker = pickle_bomb
    before = path.read_bytes()
    res = run_script(script, [f"ckpt_path={path}", f"paths.log_dir={tmp_path}/logs"], cwd=tmp_path, timeout=120)
    assert res.returncode == 2, res.stderr[-2000:]
    lines = [ln for ln in res.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "refused to load checkpoint" in lines[0] and "Traceback" not in res.stderr
    assert not marker.exists()
    assert path.read_bytes() == before


@pytest.mark.parametrize("target", [
    "pathlib.Path.touch",                 # outside the allowlist
    "scorelab.lit.loggers.os.system",     # inside it by name, but resolves to os.system
    "scorelab.utils.torch.save",          # inside it by name, but resolves to torch.save
])
def test_stored_target_outside_the_allowlist_is_refused(tmp_path, target):
    marker = tmp_path / "pwned"
    stored = _stored_config(tmp_path)
    stored["sde"] = {"_target_": target, "_args_": [str(marker)]}
    path = tmp_path / "hostile_target.ckpt"
    torch.save({"state_dict": {}, "scorelab_config": stored}, path)
    res = run_script("sample.py", [f"ckpt_path={path}", f"paths.log_dir={tmp_path}/logs"], cwd=tmp_path, timeout=120)
    assert res.returncode == 2, res.stderr[-2000:]
    assert f"asks to build '{target}' (at sde._target_)" in res.stderr and "Traceback" not in res.stderr
    assert not marker.exists()


def test_own_config_targets_pass_the_allowlist(tmp_path):
    check_stored_targets(_stored_config(tmp_path), "own")  # every _target_ scorelab's configs use
    for name in ("torch.optim.AdamW", "torch.optim.lr_scheduler.LambdaLR", "lightning.pytorch.Trainer"):
        check_stored_targets({"x": {"_target_": name}}, "own")
    with pytest.raises(UnsafeFileError, match="builtins.eval"):
        check_stored_targets({"a": [{"b": {"_target_": "builtins.eval"}}]}, "nested")


def _old_net(target: str, **keys) -> dict:
    """A ``model`` node as checkpoints of earlier scorelab versions stored it: the preset class by name."""
    return {"_target_": "scorelab.models.ScoreModel", "output": "eps",
            "net": {"_target_": target, "in_channels": None, "image_size": None, **keys}}


@pytest.mark.parametrize("old, embedding, fir, progressive_input", [
    ("scorelab.models.ddpmpp.DDPMpp", "positional", False, "none"),
    ("scorelab.models.ncsnpp.NCSNpp", "fourier", True, "residual"),
])
def test_checkpoints_of_earlier_versions_name_today_s_network(old, embedding, fir, progressive_input):
    from scorelab.cli.common import upgrade_stored_config

    stored = {"model": _old_net(old, ch=16, ch_mult=[1, 2]), "sde": {"_target_": "scorelab.sde.VPSDE"}}
    with pytest.raises(UnsafeFileError):  # the old name itself no longer resolves
        check_stored_targets(stored, "old.ckpt")
    new = upgrade_stored_config(stored)
    check_stored_targets(new, "old.ckpt")
    net = new["model"]["net"]
    assert net["_target_"] == "scorelab.models.ScoreUNet" and stored["model"]["net"]["_target_"] == old
    # keys the file holds win (null ones are filled from the data later); absent ones take the old class's defaults
    assert (net["ch"], net["ch_mult"], net["in_channels"], net["image_size"]) == (16, [1, 2], None, None)
    assert (net["embedding_type"], net["fir"], net["progressive_input"]) == (embedding, fir, progressive_input)
    assert net["num_res_blocks"] == 4 and net["attn_resolutions"] == [16]
    assert new["sde"] == stored["sde"]
