"""Files other people wrote must never run code: hostile checkpoints are refused before anything in them runs."""
from __future__ import annotations

import os
import pathlib

import pytest
import torch
from omegaconf import OmegaConf

from scorelab.cli.common import load_checkpoint
from scorelab.cli.safety import check_stored_config
from scorelab.core.errors import UnsafeFileError
from scorelab.core.io import load_torch_file

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
    res = run_script(script, [f"ckpt_path={path}"], cwd=tmp_path, timeout=120)
    assert res.returncode == 2, res.stderr[-2000:]
    lines = [ln for ln in res.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "refused to load checkpoint" in lines[0] and "Traceback" not in res.stderr
    assert not marker.exists()
    assert path.read_bytes() == before


# --- stored configs may build only what the shipped conf/ builds there, and are never resolved -------------------
OPEN_FOR_WRITING = "{{_target_: builtins.open, _args_: ['{victim}', w]}}"


def _hostile_configs(victim: pathlib.Path, marker: pathlib.Path) -> dict:
    """Stored configs that would write ``marker`` or truncate ``victim`` if anything in them were built or resolved."""
    create = "${oc.create:" + OPEN_FOR_WRITING.format(victim=victim) + "}"
    decode = "${oc.decode:\"" + OPEN_FOR_WRITING.format(victim=victim) + "\"}"
    return {
        # a scorelab function with a side effect: under "scorelab." but never a target of conf/
        "scorelab_function": ("data", {"_target_": "scorelab.core.io.write_text_atomic", "path": str(marker),
                                       "text": "pwned"}),
        # shipped, but not where it is used: the MNIST extractor trains and caches a classifier when missing
        "shipped_elsewhere": ("data", {"_target_": "scorelab.metrics.mnist_classifier.mnist_features",
                                       "path": str(marker), "data_dir": str(marker.parent)}),
        "builtin_open": ("sde", {"_target_": "builtins.open", "_args_": [str(victim), "w"]}),
        "oc_create": ("model.net", create),
        "oc_decode": ("sde.beta_min", decode),
        "oc_create_in_a_list": ("model.net.ch_mult", [1, create]),
        "oc_create_nested": ("sampler.grid", {"kind": create}),
        "target_in_a_list": ("sampler.extra", [{"_target_": "builtins.open", "_args_": [str(victim), "w"]}]),
        "oc_env": ("data.seed", "${oc.env:HOME}"),
    }


def _plant(stored: dict, dotted: str, value) -> dict:
    node = stored
    *parents, last = dotted.split(".")
    for key in parents:
        node = node.setdefault(key, {})
    node[last] = value
    return stored


@pytest.fixture
def victim(tmp_path):
    path = tmp_path / "victim.txt"
    path.write_bytes(b"precious bytes\n")
    return path


@pytest.mark.parametrize("case", ["scorelab_function", "shipped_elsewhere", "builtin_open", "oc_create", "oc_decode",
                                  "oc_create_in_a_list", "oc_create_nested", "target_in_a_list", "oc_env"])
def test_hostile_stored_config_is_refused_before_anything_is_built(tmp_path, victim, case):
    from scorelab.cli.sample import load_trained

    marker = tmp_path / "pwned"
    where, value = _hostile_configs(victim, marker)[case]
    stored = _plant(_stored_config(tmp_path), where, value)
    path = tmp_path / f"{case}.ckpt"
    torch.save({"state_dict": {}, "scorelab_config": stored}, path)
    with pytest.raises(UnsafeFileError, match=f"refused {path}") as info:
        load_trained(str(path))
    assert "conf/" in str(info.value) or "interpolation" in str(info.value)
    assert not marker.exists()
    assert victim.read_bytes() == b"precious bytes\n"
    if case == "oc_env":
        assert os.environ["HOME"] not in str(info.value)  # nothing of the environment reaches the message


@pytest.mark.parametrize("case", ["scorelab_function", "oc_create"])
def test_hostile_stored_config_is_refused_by_the_command(tmp_path, victim, case):
    marker = tmp_path / "pwned"
    where, value = _hostile_configs(victim, marker)[case]
    stored = _plant(_stored_config(tmp_path), where, value)
    path = tmp_path / "hostile.ckpt"
    torch.save({"state_dict": {}, "scorelab_config": stored}, path)
    res = run_script("sample.py", [f"ckpt_path={path}"], cwd=tmp_path, timeout=120)
    assert res.returncode == 2, res.stderr[-2000:]
    errors = [ln for ln in res.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "refused" in errors[0] and "Traceback" not in res.stderr
    assert not marker.exists() and victim.read_bytes() == b"precious bytes\n"
    assert not (tmp_path / "logs").exists() or not any((tmp_path / "logs").rglob("samples*"))


def test_own_config_passes_and_the_rule_is_the_shipped_tree(tmp_path):
    from scorelab.cli.safety import shipped_targets

    check_stored_config(_stored_config(tmp_path), "own")  # every _target_ of the default job
    allowed = shipped_targets()
    assert "scorelab.sde.VPSDE" in allowed["sde"] and "torch.optim.Adam" in allowed["optimizer"]
    assert "scorelab.sampling.PCSampler" in allowed["callbacks"]  # the FID callback's own sampler
    assert not any(t.startswith("builtins.") or t == "scorelab.core.io.write_text_atomic"
                   for targets in allowed.values() for t in targets)
    for name in ("scorelab.utils.torch.save", "scorelab.lit.loggers.os.system", "pathlib.Path.touch"):
        with pytest.raises(UnsafeFileError, match=name):
            check_stored_config({"sde": {"_target_": name}}, "x.ckpt")
    with pytest.raises(UnsafeFileError, match="positional"):
        check_stored_config({"sde": {"_target_": "scorelab.sde.VPSDE", "_args_": [1]}}, "x.ckpt")
    with pytest.raises(UnsafeFileError, match="not a mapping"):
        check_stored_config([{"_target_": "scorelab.sde.VPSDE"}], "x.ckpt")


def _old_net(target: str, **keys) -> dict:
    """A ``model`` node as checkpoints of earlier scorelab versions stored it: the preset class by name."""
    return {"_target_": "scorelab.models.ScoreModel", "output": "eps",
            "net": {"_target_": target, "in_channels": None, "image_size": None, **keys}}


@pytest.mark.parametrize("old, embedding, fir, progressive_input", [
    ("scorelab.models.ddpmpp.DDPMpp", "positional", False, "none"),
    ("scorelab.models.ncsnpp.NCSNpp", "fourier", True, "residual"),
])
def test_checkpoints_of_earlier_versions_name_today_s_network(old, embedding, fir, progressive_input):
    from scorelab.cli.safety import upgrade_stored_config

    stored = {"model": _old_net(old, ch=16, ch_mult=[1, 2]), "sde": {"_target_": "scorelab.sde.VPSDE"}}
    with pytest.raises(UnsafeFileError):  # the old name itself no longer resolves
        check_stored_config(stored, "old.ckpt")
    new = upgrade_stored_config(stored)
    check_stored_config(new, "old.ckpt")
    net = new["model"]["net"]
    assert net["_target_"] == "scorelab.models.ScoreUNet" and stored["model"]["net"]["_target_"] == old
    # keys the file holds win (null ones are filled from the data later); absent ones take the old class's defaults
    assert (net["ch"], net["ch_mult"], net["in_channels"], net["image_size"]) == (16, [1, 2], None, None)
    assert (net["embedding_type"], net["fir"], net["progressive_input"]) == (embedding, fir, progressive_input)
    assert net["num_res_blocks"] == 4 and net["attn_resolutions"] == [16]
    assert new["sde"] == stored["sde"]
