"""Convert a released score_sde_pytorch checkpoint (Song et al. 2021) into a scorelab checkpoint.

    python -m scorelab.convert checkpoint_8.pth --config ve/cifar10_ncsnpp_continuous --out ncsnpp_ve.ckpt
    python sample.py ckpt_path=ncsnpp_ve.ckpt n_samples=50000 eval.fid=true

The output is what ``train.py`` writes: the config of the matching experiment (data, SDE, model, loss, sampler,
EMA) with the reference's values filled in, the raw weights as the model and the EMA weights as its EMA copy, read by
``sample.py``, ``fid.py`` and ``likelihood.py`` with ``torch.load(weights_only=True)`` like any other checkpoint.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import torch
import yaml
from omegaconf import DictConfig, OmegaConf, open_dict

from ..core.errors import UnsafeFileError, UserError
from ..core.io import atomic_path, load_torch_file
from ..interop.score_sde import (
    KNOWN_KEYS,
    PRESETS,
    ReferenceLayout,
    read_reference_weights,
    reference_config,
    scorelab_settings,
)
from .safety import check_plain_values

EXPERIMENTS = {"vp": "cifar10_ddpmpp_vp", "subvp": "cifar10_ddpmpp_subvp", "ve": "cifar10_ncsnpp_ve"}
WEIGHTS = ("ema", "raw")


def parse_values(items: list[str]) -> tuple[str | None, dict[str, Any]]:
    """``[preset] key=value ...`` -> ``(preset or None, {key: value})``; values are YAML (``[1,2,2]``, ``false``)."""
    preset, values = None, {}
    for i, item in enumerate(items):
        if "=" not in item:
            if i:
                raise UserError(f"--config: {item!r} is neither the first word (a preset) nor key=value")
            preset = item
            continue
        key, text = item.split("=", 1)
        try:
            values[key.strip()] = yaml.safe_load(text)
        except yaml.YAMLError:
            raise UserError(f"--config: cannot read the value of {item!r}") from None
    return preset, values


def scorelab_config(ref: dict[str, Any], out: Path) -> DictConfig:
    """The training config a scorelab run of this reference model would have: the experiment of its SDE, with the
    network, parameterisation, SDE, data range and EMA rate of ``ref``."""
    from hydra import compose, initialize_config_dir

    from .project import CONF_DIR as conf

    if not conf.is_dir():
        raise UserError(f"scorelab's configs are not at {conf}: run the converter from a scorelab checkout")
    with initialize_config_dir(str(conf), version_base="1.3"):
        cfg = compose(config_name="train", overrides=[f"experiment={EXPERIMENTS[ref['sde']]}"])
    settings = scorelab_settings(ref)
    with open_dict(cfg):
        cfg.paths.output_dir = str(out.parent)
        cfg.model.update(settings["model"])
        cfg.model.net.update(settings["net"])
        cfg.sde.update(settings["sde"])
        cfg.data.update(settings["data"])
        cfg.module.ema_decay = float(ref["ema_rate"])
    return cfg


def convert(source: str, config: list[str], out: str, weights: str = "ema", overwrite: bool = False) -> Path:
    """Read ``source``, build the scorelab model ``config`` describes, load its weights and write ``out``.

    Args:
        source: a released ``checkpoint_<n>.pth`` (``model``, ``ema``, ``optimizer``, ``step``), or a file with a
            ``state_dict`` of ``all_modules.*`` weights (and optionally the reference's ``config`` values).
        config: ``[preset] [key=value ...]``: one of :data:`~scorelab.interop.score_sde.PRESETS` and/or the
            reference's config values (``nf=64 num_res_blocks=2 sde=ve``); the file's own values come between.
        out: the scorelab checkpoint to write.
        weights: which weights the model samples with: ``ema`` (the file's EMA, what the paper sampled with) or
            ``raw`` (the trained weights; then the EMA copy holds them too).
        overwrite: replace ``out`` if it exists.

    Returns:
        The written path. Nothing is written when anything fails.
    """
    from .runs import build_run

    if weights not in WEIGHTS:
        raise UserError(f"--weights must be one of {WEIGHTS}, got {weights!r}")
    src, dst = Path(source).expanduser(), Path(out).expanduser()
    if not src.is_file():
        raise UserError(f"reference checkpoint not found: {src}")
    if dst.exists() and not overwrite:
        raise UserError(f"{dst} exists: pass --overwrite to replace it, or another --out")
    preset, values = parse_values(config)
    try:
        loaded = load_torch_file(src, "reference checkpoint")
    except UnsafeFileError:
        raise
    except Exception as exc:
        raise UserError(f"{src} cannot be read as a torch file ({type(exc).__name__}: {exc})") from None
    check_plain_values(values, "--config")
    if isinstance(loaded, dict) and isinstance(loaded.get("config"), dict):  # before anything else reads the file
        check_plain_values(loaded["config"], str(src))  # numbers, booleans, strings, lists: nothing to build
    raw, shadow, extras = read_reference_weights(loaded)
    stored = {k: v for k, v in extras.get("config", {}).items() if k in KNOWN_KEYS}  # the file's own values
    ref = reference_config(preset, {**stored, **values})
    if weights == "ema" and shadow is None:
        raise UserError(f"{src} holds one set of weights and no EMA ('ema' of the released checkpoints): pass "
                        "--weights raw to convert them")

    cfg = scorelab_config(ref, dst)
    run = build_run(cfg)
    parts, module = run.parts, run.module
    shape = (int(ref["num_channels"]), int(ref["image_size"]), int(ref["image_size"]))
    if tuple(parts["datamodule"].sample_shape) != shape:
        raise UserError(f"the reference model takes {shape} images but data={cfg.data._target_.rsplit('.', 1)[-1]} "
                        f"gives {tuple(parts['datamodule'].sample_shape)}")
    layout = ReferenceLayout(module.score_model.net)
    trained = layout.to_scorelab(raw)
    averaged = layout.to_scorelab(layout.ema_state(shadow, raw)) if weights == "ema" else trained
    module.score_model.net.load_state_dict(trained)
    module.ema.module.net.load_state_dict(averaged)
    if extras.get("ema_updates") is not None:
        module.ema.n_averaged.fill_(int(extras["ema_updates"]))
    step = int(extras.get("step") or 0)
    checkpoint = {
        "state_dict": module.state_dict(),
        "scorelab_config": OmegaConf.to_container(cfg, resolve=True),
        "global_step": step,
        "epoch": 0,
        "scorelab_converted_from": {"file": str(src.resolve()), "weights": weights, "step": step,
                                    "reference_config": {k: v for k, v in ref.items() if k in KNOWN_KEYS}},
    }
    with atomic_path(dst) as tmp:
        torch.save(checkpoint, tmp)
    print(f"wrote {dst} ({ref['sde']} SDE, {sum(p.numel() for p in module.score_model.parameters()):,} parameters, "
          f"{weights} weights of step {step}); sample it with: python sample.py ckpt_path={dst}")
    return dst


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(
        prog="python -m scorelab.convert",
        description="Convert a released score_sde_pytorch checkpoint (DDPM++ / NCSN++) into a scorelab checkpoint "
                    "for sample.py, fid.py and likelihood.py.",
        epilog=f"presets: {', '.join(PRESETS)}. Keys: {', '.join(sorted(KNOWN_KEYS))}.")
    parser.add_argument("source", help="checkpoint_<n>.pth as released (or a .pt with state_dict [+ config])")
    parser.add_argument("--config", nargs="+", default=[], metavar="PRESET_OR_KEY=VALUE",
                        help="the reference config it was trained with: a preset (its configs/<sde>/<name>.py) "
                             "and/or key=value reference values (nf=64 num_res_blocks=2 sde=ve ...)")
    parser.add_argument("--out", required=True, help="the scorelab checkpoint to write (.ckpt)")
    parser.add_argument("--weights", choices=WEIGHTS, default="ema",
                        help="sample with the EMA weights (default; what the paper reports) or the raw ones")
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    args = parser.parse_args(argv)
    return convert(args.source, args.config, args.out, args.weights, args.overwrite)


if __name__ == "__main__":
    from .errors import run_or_exit

    run_or_exit(main, sys.argv[1:])
