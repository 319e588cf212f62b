"""Helpers the train and sample commands share: building objects from config, checkpoints, resolvers."""
from __future__ import annotations

import inspect
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict

from ..io import load_torch_file
from .errors import UnsafeFileError, UserError

# What a checkpoint's stored config may name as ``_target_``: scorelab's own classes and functions, torch's
# optimisers and schedulers, and the Lightning Trainer, callbacks and loggers the training config describes.
ALLOWED_TARGET_PREFIXES = ("scorelab.", "torch.optim.", "lightning.pytorch.callbacks.", "lightning.pytorch.loggers.")
ALLOWED_TARGETS = ("lightning.pytorch.Trainer",)
ALLOWED_MODULES = ("scorelab", "torch.optim", "lightning.pytorch")


def resolve_device(name: str) -> torch.device:
    """``auto`` (CUDA when available), ``cpu``, ``cuda`` or ``cuda:N``; a one-line error for anything else."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"device={name!r} is not a device name: use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device={name} but no CUDA GPU is available here: use device=cpu or device=auto")
    return device


def progress_bar(total: int, desc: str, enabled: bool = True):
    """A tqdm bar (to stderr) and its ``update(n)``; a no-op when disabled."""
    from tqdm.auto import tqdm

    bar = tqdm(total=total, desc=desc, unit="img", disable=not enabled, dynamic_ncols=True)
    return bar, bar.update


def compose_group(cfg: DictConfig, group: str, option: str) -> DictConfig:
    """The config of ``<group>=<option>`` (e.g. ``data=cifar10``), resolved against ``cfg``'s ``paths``.

    Lets a command take a config name as a value (``ref=cifar10``). Composes with the running Hydra app, or with
    ``<paths.root_dir>/conf`` when called outside one (tests, notebooks).
    """
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import MissingConfigException

    try:
        if GlobalHydra.instance().is_initialized():
            composed = compose(config_name=f"{group}/{option}")
        else:
            with initialize_config_dir(str(Path(cfg.paths.root_dir) / "conf"), version_base="1.3"):
                composed = compose(config_name=f"{group}/{option}")
    except MissingConfigException:
        raise UserError(f"{option!r} is neither a file nor a {group} config (conf/{group}/<name>.yaml)") from None
    node = composed[group] if group in composed else composed
    root = OmegaConf.create(OmegaConf.to_container(cfg, resolve=False))  # interpolations resolve against cfg
    root[group] = node
    return root[group]


def fill_from_data(net_cfg: DictConfig, sample_shape: tuple[int, ...], num_classes: int | None = None) -> None:
    """Set the network's arguments left ``null`` in config from the data module's ``sample_shape``, and
    ``num_classes: auto`` from the data module's ``num_classes`` (a class-conditional network).

    Which arguments the data fix is the network's own declaration, ``data_arguments(sample_shape) -> {name: value}``
    (a classmethod of :class:`~scorelab.models.ScoreUNet`, :class:`~scorelab.models.ScoreMLP`, ...); a network
    without one gets nothing filled in.
    """
    from hydra.utils import get_object

    fill_num_classes(net_cfg, num_classes)
    declare = getattr(get_object(net_cfg._target_), "data_arguments", None)
    if declare is None:
        return
    try:
        values = declare(tuple(sample_shape))
    except ValueError as exc:
        raise UserError(f"model.net ({net_cfg._target_}) does not fit data of shape {tuple(sample_shape)}: {exc}; "
                        "pick a model made for this data (e.g. model=mlp for points)") from None
    with open_dict(net_cfg):
        for key, value in values.items():
            if net_cfg.get(key) is None:
                net_cfg[key] = value


def fill_num_classes(net_cfg: DictConfig, num_classes: int | None) -> None:
    """Replace ``num_classes: auto`` by the data's class count; refuse it (and anything but a count) clearly."""
    value = net_cfg.get("num_classes")
    if value is None or (isinstance(value, int) and not isinstance(value, bool) and value >= 0):
        return
    if value != "auto":
        raise UserError(f"model.net.num_classes must be 0 (unconditional), auto (the data's classes) or a positive "
                        f"integer, got {value!r}")
    if not num_classes:
        raise UserError("model.net.num_classes=auto needs labelled data, but this data module has no classes; "
                        "train it unconditionally (model.net.num_classes=0) or give the data labels")
    with open_dict(net_cfg):
        net_cfg.num_classes = int(num_classes)


def build_core(cfg: DictConfig) -> dict[str, Any]:
    """Instantiate the data module, SDE, score model, loss and sampler from a composed config."""
    datamodule = instantiate(cfg.data)
    sde = instantiate(cfg.sde)
    model_cfg = cfg.model.copy()
    fill_from_data(model_cfg.net, tuple(datamodule.sample_shape), getattr(datamodule, "num_classes", None))
    score_model = instantiate(model_cfg, sde=sde)
    loss = instantiate(cfg.loss, sde=sde)
    if hasattr(loss, "check_model"):  # an objective that needs more of the model (loss=hybrid: a learned variance)
        loss.check_model(score_model)
    sampler = instantiate(cfg.sampler)
    return {"datamodule": datamodule, "sde": sde, "score_model": score_model, "loss": loss, "sampler": sampler}


def load_checkpoint(path: str) -> tuple[str, dict]:
    """Fail early, with what to do, on a missing, unreadable or unsafe checkpoint; return its path and contents.

    The file is read with ``torch.load(weights_only=True)``: a checkpoint carrying pickled code is refused
    before anything in it runs.
    """
    p = Path(str(path)).expanduser()
    if not p.is_file():
        raise UserError(f"checkpoint not found: {p}. Pass ckpt_path=<run dir>/checkpoints/last.ckpt of an earlier run")
    try:
        ckpt = load_torch_file(p, "checkpoint")
    except UnsafeFileError:
        raise
    except Exception as exc:  # any zip/unpickling error means the file is not a usable checkpoint
        raise UserError(f"checkpoint {p} cannot be read ({type(exc).__name__}: {exc}); it may be truncated or not "
                        "a Lightning checkpoint: pick another file, e.g. an epoch_*.ckpt next to it") from None
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise UserError(f"{p} is not a Lightning checkpoint (no state_dict); pass a .ckpt written by train.py")
    return str(p.resolve()), ckpt


# Networks that earlier scorelab versions stored by their own class name and that are now presets (configs) of
# ``ScoreUNet``: old name -> the old class's defaults, filled in wherever a stored config left a key out.
_UNET_DEFAULTS = dict(in_channels=3, image_size=32, ch=128, ch_mult=[1, 2, 2, 2], num_res_blocks=4,
                      attn_resolutions=[16], dropout=0.1, embedding_type="positional", fourier_scale=16.0,
                      resblock_type="biggan", resamp_with_conv=True, fir=False, fir_kernel=[1, 3, 3, 1],
                      skip_rescale=True, progressive="none", progressive_input="none", progressive_combine="sum",
                      init_scale=0.0)
RENAMED_TARGETS = {
    "scorelab.models.ddpmpp.DDPMpp": ("scorelab.models.ScoreUNet", _UNET_DEFAULTS),
    "scorelab.models.ncsnpp.NCSNpp": ("scorelab.models.ScoreUNet", {
        **_UNET_DEFAULTS, "embedding_type": "fourier", "fir": True, "progressive_input": "residual"}),
}


def upgrade_stored_config(node: Any) -> Any:
    """A stored config (plain containers) with the ``_target_``s of earlier scorelab versions renamed to today's.

    Only exact names in :data:`RENAMED_TARGETS` change, so the allowlist check that follows still sees every other
    name as written in the file.
    """
    if isinstance(node, Mapping):
        out = {k: upgrade_stored_config(v) for k, v in node.items()}
        renamed = RENAMED_TARGETS.get(out.get("_target_")) if isinstance(out.get("_target_"), str) else None
        if renamed is not None:
            target, defaults = renamed
            out = {**defaults, **out, "_target_": target}  # keys the file has (even null: filled from data) win
        return out
    if isinstance(node, (list, tuple)):
        return [upgrade_stored_config(v) for v in node]
    return node


def _target_allowed(name: Any) -> bool:
    """Whether ``name`` is on the allowlist *and* resolves to a class or function defined there.

    Resolving matters: ``scorelab.utils.torch.load`` starts with ``scorelab.`` but is ``torch.load``.
    """
    if not isinstance(name, str) or not (name in ALLOWED_TARGETS or name.startswith(ALLOWED_TARGET_PREFIXES)):
        return False
    from hydra._internal.utils import _locate

    try:
        obj = _locate(name)  # imports only modules of the allowed packages (checked above)
    except Exception:
        return False
    module = getattr(obj, "__module__", None) or ""
    defined_there = any(module == m or module.startswith(m + ".") for m in ALLOWED_MODULES)
    return (inspect.isclass(obj) or inspect.isfunction(obj)) and defined_there


def check_stored_targets(node: Any, source: str, where: str = "") -> None:
    """Refuse a stored config if any ``_target_`` in it is outside the allowlist; nothing is instantiated first.

    Args:
        node: a config (``DictConfig``, ``ListConfig`` or plain containers) taken from a file.
        source: the file, for the message.
        where: the key path of ``node`` (used in recursion).
    """
    if isinstance(node, (Mapping, DictConfig)):
        for key, value in node.items():
            path = f"{where}.{key}" if where else str(key)
            if key == "_target_" and not _target_allowed(value):
                raise UnsafeFileError(
                    f"refused {source}: its stored config asks to build {value!r} (at {path}), which is not one of "
                    "scorelab's classes, a torch optimiser or scheduler, or a Lightning trainer, callback or logger"
                )
            check_stored_targets(value, source, path)
    elif isinstance(node, (list, tuple, ListConfig)):
        for i, value in enumerate(node):
            check_stored_targets(value, source, f"{where}[{i}]")


def check_state_dict(module: torch.nn.Module, state_dict: dict, path: str) -> None:
    """Raise a one-line error if a checkpoint's weights do not fit ``module`` (config changed since training)."""
    own = module.state_dict()
    missing = [k for k in own if k not in state_dict]
    wrong = [k for k in own if k in state_dict and state_dict[k].shape != own[k].shape]
    if missing or wrong:
        key = (wrong or missing)[0]
        what = (f"{key} has shape {tuple(state_dict[key].shape)} there but {tuple(own[key].shape)} here"
                if wrong else f"{key} is missing from it")
        raise UserError(f"checkpoint {path} does not fit the configured model ({what}); use the model/data/sde "
                        "settings it was trained with")
