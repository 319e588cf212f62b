"""``python -m scorelab.convert``: the reference's (score_sde_pytorch) checkpoints as scorelab checkpoints.

The fixtures are outputs of the reference's own network code on small versions of its CIFAR-10 configs; they are
found through ``SCORELAB_SHARED_FIXTURES`` (the folder holding ``score_sde_reference/``).
"""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import torch

from scorelab.cli.convert import convert
from scorelab.cli.sample import load_trained
from scorelab.interop.score_sde import ReferenceLayout, build_network, read_reference_weights, reference_config

from .platform_utils import ROOT, python_command, run_script, snapshot

FIXTURES = Path(os.environ.get("SCORELAB_SHARED_FIXTURES",
                               Path(__file__).resolve().parents[2] / "shared" / "fixtures")) / "score_sde_reference"
SMALL = ["nf=16", "num_res_blocks=1"]  # the fixtures' sizes; every other value is the preset's
CASES = {"ddpmpp_vp": "vp/cifar10_ddpmpp_continuous", "ncsnpp_ve": "ve/cifar10_ncsnpp_continuous"}


def fixture(name: str, released: bool = False) -> Path:
    path = FIXTURES / (f"ref_{name}_small_released_layout.pth" if released else f"ref_{name}_small.pt")
    if not path.is_file():
        pytest.skip(f"reference fixture {path.name} not found in {FIXTURES} (set SCORELAB_SHARED_FIXTURES)")
    return path


def reference_output(trained, x: torch.Tensor, time_cond: torch.Tensor) -> torch.Tensor:
    """What the reference network returns for ``(x, time_cond)``, computed through the converted ScoreModel.

    VP: the label is ``999 t`` and the reference's score is ``-net / std``; VE: the label is sigma and the network
    (``scale_by_sigma``) returns the score. Times are float64 so that ``t -> sigma`` adds no rounding of its own;
    the network runs in float32, as the reference did.
    """
    sde, time_cond = trained.sde, time_cond.double()
    with torch.no_grad():
        if type(sde).__name__ == "VESDE":
            return trained.score(x, sde.t_of_sigma(time_cond))
        t = time_cond / 999.0
        return -trained.score(x, t) * sde.marginal_std(t)[:, None, None, None]


@pytest.mark.parametrize("name", list(CASES))
def test_converted_released_checkpoint_reproduces_the_reference_network(tmp_path, name):
    data = torch.load(fixture(name), weights_only=True)
    out = convert(str(fixture(name, released=True)), [CASES[name], *SMALL], str(tmp_path / "model.ckpt"))
    ckpt = torch.load(out, weights_only=True)  # a plain scorelab checkpoint: tensors, numbers and strings only
    assert ckpt["scorelab_config"]["model"]["net"]["_target_"] == "scorelab.models.ScoreUNet"
    assert ckpt["global_step"] == 5 and ckpt["scorelab_converted_from"]["weights"] == "ema"
    errors = {}
    for use_ema, key in [(True, "output_ema"), (False, "output")]:  # EMA: sample.py's default
        trained = load_trained(str(out), use_ema)
        trained.score.eval()
        got = reference_output(trained, data["x"], data["time_cond"])
        errors[key] = (got - data[key]).abs().max().item()
    print(f"{name}: max abs error {errors}")
    assert errors["output_ema"] < 1e-5 and errors["output"] < 1e-5
    # raw and EMA weights differ, so each output checks its own set of weights
    assert (data["output"] - data["output_ema"]).abs().max() > 1e-2


@pytest.mark.parametrize("name", list(CASES))
def test_state_dict_file_with_its_config_converts(tmp_path, name):
    data = torch.load(fixture(name), weights_only=True)
    released = torch.load(fixture(name, released=True), weights_only=True)
    sde = CASES[name].split("/")[0]
    with pytest.raises(Exception, match="no EMA"):  # one set of weights: the EMA default cannot be honoured
        convert(str(fixture(name)), [f"sde={sde}"], str(tmp_path / "no.ckpt"))
    assert not (tmp_path / "no.ckpt").exists()
    # The file's own config gives the sizes (nf=16, one block); its state_dict holds the tensors of the released
    # file's EMA, so the converted network gives the EMA output.
    keys = [k for k in data["state_dict"] if k != "sigmas"]
    assert all(torch.equal(data["state_dict"][k], s) for k, s in zip(keys, released["ema"]["shadow_params"],
                                                                      strict=True))
    # a stored config may carry keys the network does not use (the reference's config.training, ...): ignored
    torch.save({**data, "config": {**data["config"], "n_iters": 1300001}}, tmp_path / "with_extra_keys.pt")
    out = convert(str(tmp_path / "with_extra_keys.pt"), [f"sde={sde}"], str(tmp_path / "model.ckpt"), weights="raw")
    trained = load_trained(str(out), use_ema=True)
    trained.score.eval()
    assert (reference_output(trained, data["x"], data["time_cond"]) - data["output_ema"]).abs().max() < 1e-5


@pytest.mark.parametrize("value", [
    {"_target_": "builtins.open", "_args_": ["{victim}", "w"]},           # a config to build
    "${{oc.create:{{_target_: builtins.open, _args_: ['{victim}', w]}}}}",  # an interpolation that would build it
    ["${{oc.env:HOME}}"],                                                  # an environment value, in a list
], ids=["target", "oc_create", "oc_env_in_a_list"])
def test_hostile_reference_config_values_are_refused(tmp_path, value):
    from scorelab.core.errors import UnsafeFileError

    victim = tmp_path / "victim.txt"
    victim.write_bytes(b"precious bytes\n")
    data = torch.load(fixture("ddpmpp_vp"), weights_only=True)

    def fill(v):
        return ({k: fill(x) for k, x in v.items()} if isinstance(v, dict) else [fill(x) for x in v]
                if isinstance(v, list) else v.format(victim=victim) if isinstance(v, str) else v)

    torch.save({**data, "config": {**data["config"], "nf": fill(value)}}, tmp_path / "hostile.pt")
    with pytest.raises(UnsafeFileError, match="refused .*hostile.pt: its config value 'nf'") as info:
        convert(str(tmp_path / "hostile.pt"), ["sde=vp"], str(tmp_path / "model.ckpt"), weights="raw")
    assert os.environ["HOME"] not in str(info.value)
    assert victim.read_bytes() == b"precious bytes\n" and not (tmp_path / "model.ckpt").exists()


def test_layout_walks_the_reference_construction_order():
    # The names of the fixture file, in their order, come out of walking a ScoreUNet of the same configuration.
    for name, preset in CASES.items():
        data = torch.load(fixture(name), weights_only=True)
        cfg = reference_config(preset, {**data["config"], "sde": preset.split("/")[0]})
        layout = ReferenceLayout(build_network(cfg))
        assert layout.reference_keys == [k for k in data["state_dict"] if k != "sigmas"]
        assert all(layout.shapes[k] == v.shape for k, v in data["state_dict"].items() if k != "sigmas")


def perturbed(net: torch.nn.Module, seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {k: v + 0.05 * torch.randn(v.shape, generator=gen) for k, v in net.state_dict().items()}


def write_released_layout(path: Path, cfg: dict, raw: dict, ema: dict) -> ReferenceLayout:
    """Save scorelab weights the way the reference's ``utils.save_checkpoint`` saves its own."""
    layout = ReferenceLayout(build_network(cfg))
    ref_raw, ref_ema = layout.to_reference(raw), layout.to_reference(ema)
    model = {"module.sigmas": torch.linspace(50.0, 0.01, 1000), **{f"module.{k}": v for k, v in ref_raw.items()}}
    shadow = [ref_ema[k] for k in layout.trainable_keys]
    torch.save({"model": model, "ema": {"decay": 0.999, "num_updates": 3, "shadow_params": shadow},
                "optimizer": {"state": {}, "param_groups": []}, "step": 3}, path)
    return layout


OTHER_SIZES = {
    "ncsnpp_wider_shallower": ("ve/cifar10_ncsnpp_continuous",
                               ["nf=32", "ch_mult=[1,2,2]", "num_res_blocks=2", "attn_resolutions=[8,16]"]),
    "ddpmpp_deep_narrow": ("vp/cifar10_ddpmpp_deep_continuous", ["nf=8", "ch_mult=[1,1,2,2]"]),
    "ncsnpp_pyramids_ddpm_blocks": ("ve/cifar10_ncsnpp_continuous",
                                    ["nf=16", "num_res_blocks=1", "resblock_type=ddpm", "progressive=output_skip",
                                     "progressive_input=input_skip", "progressive_combine=cat"]),
    "ddpmpp_residual_pyramids_pool": ("subvp/cifar10_ddpmpp_continuous",
                                      ["nf=16", "num_res_blocks=1", "resblock_type=ddpm", "resamp_with_conv=false",
                                       "progressive=residual", "progressive_input=residual"]),
}


@pytest.mark.parametrize("case", list(OTHER_SIZES))
def test_other_sizes_and_options_convert(tmp_path, case):
    """Any size or option of the architecture converts: weights saved in the reference's layout (names and EMA
    order from the structural walk) come back into the right places, for the raw and the EMA copy."""
    from scorelab.cli.convert import parse_values

    preset, values = OTHER_SIZES[case]
    cfg = reference_config(preset, parse_values(values)[1])
    net = build_network(cfg).eval()
    raw, ema = perturbed(net, 1), perturbed(net, 2)
    ema.update({k: raw[k] for k, p in net.named_parameters() if not p.requires_grad})  # fixed Fourier frequencies
    layout = write_released_layout(tmp_path / "checkpoint_3.pth", cfg, raw, ema)
    assert sum(layout.shapes[k].numel() for k in layout.reference_keys) == sum(v.numel() for v in raw.values())
    out = convert(str(tmp_path / "checkpoint_3.pth"), [preset, *values], str(tmp_path / "model.ckpt"))
    x, t = torch.rand(2, 3, 32, 32), torch.tensor([0.3, 0.8], dtype=torch.float64)
    for use_ema, weights in [(True, ema), (False, raw)]:
        trained = load_trained(str(out), use_ema)
        got = trained.score.net.state_dict()
        assert all(torch.equal(got[k], weights[k]) for k in weights)
        # and the score is the reference's: VE (uncentered, scale_by_sigma) net(2x - 1, log sigma) / sigma,
        # VP / sub-VP -net(x, 999 t) / std
        net.load_state_dict(weights)
        sde = trained.sde
        std = sde.marginal_std(t)[:, None, None, None]
        with torch.no_grad():
            if cfg["sde"] == "ve":
                expected = net(2 * x - 1, sde.marginal_std(t).log()) / std
            else:
                expected = -net(x, 999.0 * t) / std
            torch.testing.assert_close(trained.score.eval()(x, t), expected)


def test_converted_checkpoint_samples_with_sample_py(tmp_path):
    out = convert(str(fixture("ncsnpp_ve", released=True)), [CASES["ncsnpp_ve"], *SMALL], str(tmp_path / "ve.ckpt"))
    res = run_script("sample.py", [f"ckpt_path={out}", "n_samples=3", "batch_size=3", "sampler.steps=3",
                                   "progress=false", f"hydra.run.dir={tmp_path / 'samples'}"], cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    summary = json.loads((tmp_path / "samples" / "sample.json").read_text())
    assert summary["runs"][0]["nfe"] == 4 and "eps=1e-05" in summary["sampler"]  # the VE experiment's sampler
    shards = list((tmp_path / "samples" / "samples").glob("shard_*.npz"))
    assert shards and (tmp_path / "samples" / "samples.png").is_file()


def _run_convert(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]))
    return subprocess.run([*python_command(), "-m", "scorelab.convert", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


@pytest.mark.parametrize("args, message", [
    (["missing.pth", "--config", CASES["ncsnpp_ve"]], "not found"),
    (["{ve}", "--config", CASES["ddpmpp_vp"], *SMALL], "has shape"),  # NCSN++ weights, DDPM++ config
    (["{ve}", "--config", CASES["ncsnpp_ve"]], "has shape"),  # the right architecture at another size
    (["{ve}", "--config", "ve/cifar10_ncsnpp_tiny"], "unknown reference config"),
    (["{ve}", "--config", CASES["ncsnpp_ve"], "nf=16", "num_blocks=1"], "unknown reference config key"),
    (["{vp_pt}", "--config", "sde=vp"], "no EMA"),
    (["{not_torch}", "--config", CASES["ncsnpp_ve"]], "cannot be read"),
], ids=["missing", "wrong-architecture", "wrong-size", "unknown-preset", "unknown-key", "no-ema", "not-a-checkpoint"])
def test_bad_input_is_one_error_line_and_writes_nothing(tmp_path, args, message):
    (tmp_path / "notes.pth").write_text("not a torch file")
    files = {"{ve}": str(fixture("ncsnpp_ve", released=True)), "{vp_pt}": str(fixture("ddpmpp_vp")),
             "{not_torch}": str(tmp_path / "notes.pth")}
    before = snapshot(tmp_path)
    res = _run_convert([files.get(a, a) for a in args] + ["--out", str(tmp_path / "out" / "model.ckpt")], tmp_path)
    assert res.returncode == 2, res.stderr[-2000:]
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], res.stderr
    assert snapshot(tmp_path) == before and not (tmp_path / "out").exists()


def test_existing_output_is_kept_unless_overwrite(tmp_path):
    target = tmp_path / "model.ckpt"
    target.write_text("earlier")
    with pytest.raises(Exception, match="--overwrite"):
        convert(str(fixture("ncsnpp_ve", released=True)), [CASES["ncsnpp_ve"], *SMALL], str(target))
    assert target.read_text() == "earlier"
    convert(str(fixture("ncsnpp_ve", released=True)), [CASES["ncsnpp_ve"], *SMALL], str(target), overwrite=True)
    assert "state_dict" in torch.load(target, weights_only=True)


def test_reader_accepts_the_released_and_state_dict_layouts():
    raw, shadow, extras = read_reference_weights(torch.load(fixture("ncsnpp_ve", released=True), weights_only=True))
    assert shadow is not None and extras["step"] == 5 and not any(k.startswith("module.") for k in raw)
    raw, shadow, extras = read_reference_weights(torch.load(fixture("ncsnpp_ve"), weights_only=True))
    assert shadow is None and extras["config"]["nf"] == 16
    with pytest.raises(Exception, match="all_modules"):
        read_reference_weights({"net.weight": torch.zeros(2)})
