"""Helpers the train and sample commands share: building objects from config, checkpoints, resolvers."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from ..core.io import load_torch_file
from ..objectives.base import Objective
from .errors import UnsafeFileError, UserError
from .project import conf_dir


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


def progress_bar(total: int, desc: str, enabled: bool = True, unit: str = "image"):
    """A progress bar with an ETA (:class:`scorelab.core.console.Progress`: tqdm on a terminal, a line every 10 %
    otherwise; rank 0 only) and its ``update(n)``; silent when disabled. It closes itself when ``total`` is
    reached."""
    from ..core.console import Progress

    bar = Progress(total, desc, unit, enabled)
    return bar, bar.update


def compose_group(cfg: DictConfig, group: str, option: str) -> DictConfig:
    """The config of ``<group>=<option>`` (e.g. ``data=cifar10``), resolved against ``cfg``'s ``paths``.

    Lets a command take a config name as a value (``ref=cifar10``). Composes with the running Hydra app, or with
    the checkout's ``conf/`` when called outside one (tests, notebooks).
    """
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import MissingConfigException

    try:
        if GlobalHydra.instance().is_initialized():
            composed = compose(config_name=f"{group}/{option}")
        else:
            with initialize_config_dir(str(conf_dir()), version_base="1.3"):
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


def build_object(node: DictConfig, where: str, **kwargs: Any) -> Any:
    """``instantiate(node, **kwargs)`` where the class's own one-line refusal (:class:`UserError`) reaches the user
    as it is, not wrapped by Hydra, and an option the class does not take is named with the options it does."""
    from hydra.errors import InstantiationException
    from hydra.utils import get_class

    try:
        return instantiate(node, **kwargs, _convert_="all")
    except InstantiationException as exc:
        cause = exc.__cause__
        if isinstance(cause, UserError):
            raise cause from None
        if isinstance(cause, TypeError) and "unexpected keyword argument" in str(cause):
            import inspect

            name = str(cause).rsplit("argument", 1)[1].strip(" '\"")
            params = [p for p in inspect.signature(get_class(node._target_)).parameters if p not in kwargs]
            raise UserError(f"{where}.{name} is not a setting of {node._target_}; its settings are "
                            f"{', '.join(params) or '(none)'}") from None
        raise


def build_core(cfg: DictConfig) -> dict[str, Any]:
    """Instantiate the data module, SDE, score model, loss and sampler from a composed config."""
    datamodule = instantiate(cfg.data)
    sde = instantiate(cfg.sde)
    model_cfg = cfg.model.copy()
    if "net" in model_cfg:  # a backbone to size from the data (the exact score has none)
        fill_from_data(model_cfg.net, tuple(datamodule.sample_shape), getattr(datamodule, "num_classes", None))
    score_model = instantiate(model_cfg, sde=sde)
    loss = instantiate(cfg.loss, sde=sde)
    if not isinstance(loss, Objective):
        raise UserError(f"loss: {cfg.loss.get('_target_')} is not a scorelab objective (a subclass of "
                        "scorelab.objectives.Objective, which says what it needs of the model)")
    loss.check_model(score_model)  # e.g. loss=hybrid refuses a model without a learned variance
    sampler = instantiate(cfg.sampler)
    return {"datamodule": datamodule, "sde": sde, "score_model": score_model, "loss": loss, "sampler": sampler}


def load_checkpoint(path: str, key: str = "ckpt_path") -> tuple[str, dict]:
    """Fail early, with what to do, on a missing, unreadable or unsafe checkpoint; return its path and contents.

    The file is read with ``torch.load(weights_only=True)``: a checkpoint carrying pickled code is refused
    before anything in it runs. Refused in one line each: a missing file (or a dangling link, or a folder), one
    that cannot be read, one that is not a dict with a ``state_dict`` dict, and one whose stored
    ``scorelab_config`` (when present) is not a dict. ``key`` is the setting that named the file, for messages.
    """
    what = "checkpoint" if key == "ckpt_path" else f"{key} checkpoint"
    p = Path(str(path)).expanduser()
    if p.is_dir():
        raise UserError(f"checkpoint {p} is a folder, not a file; pass the checkpoint file itself, e.g. "
                        f"{p}/checkpoints/last.ckpt")
    if not p.is_file():
        link = " (a link to a file that does not exist)" if p.is_symlink() else ""
        raise UserError(f"{what} not found: {p}{link}. Pass {key}=<run dir>/checkpoints/last.ckpt of an earlier "
                        "run (or the run folder)")
    try:
        ckpt = load_torch_file(p, "checkpoint")
    except UnsafeFileError:
        raise
    except Exception as exc:  # any zip/unpickling error means the file is not a usable checkpoint
        reason = " ".join(str(exc).split())[:300]  # torch's messages can span lines: the error is one
        raise UserError(f"checkpoint {p} cannot be read ({type(exc).__name__}: {reason}); it may be truncated or "
                        "not a Lightning checkpoint: pick another file, e.g. an epoch_*.ckpt next to it") from None
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise UserError(f"{p} is not a Lightning checkpoint (no state_dict); pass a .ckpt written by train.py")
    if not isinstance(ckpt["state_dict"], dict):
        raise UserError(f"checkpoint {p} is damaged or foreign: its state_dict is a {type(ckpt['state_dict']).__name__}"
                        ", not a dict of named weights; pass a .ckpt written by train.py")
    if "scorelab_config" in ckpt and not isinstance(ckpt["scorelab_config"], dict):
        raise UserError(f"checkpoint {p} is damaged or foreign: its stored scorelab_config is a "
                        f"{type(ckpt['scorelab_config']).__name__}, not a dict of settings; pass a .ckpt written by "
                        "train.py")
    return str(p.resolve()), ckpt


def _dtype_kind(t: torch.Tensor) -> str:
    return "bool" if t.dtype == torch.bool else "complex" if t.is_complex() else \
        "floating" if t.is_floating_point() else "integer"


def check_state_dict(module: torch.nn.Module, state_dict: dict, path: str) -> None:
    """Raise a one-line error if a checkpoint's weights do not fit ``module`` (config changed since training, or a
    damaged or foreign file); the error names the checkpoint and the first offending key.

    Refused, in this order: a value that is not a (dense) tensor; a key the model does not have; a weight of
    another shape, or one the model has but the file lacks; a tensor of another kind than the model's (integer or
    bool or complex where the model has floating point, floating point where it has integers, ...); floating
    values that are not finite (nan/inf).

    A floating tensor of another floating dtype than the model's (float64 or float16 where the model is float32)
    is converted to the model's dtype in place in ``state_dict``, as torch's ``load_state_dict`` would copy it; the
    values are checked finite first. Integer buffers (e.g. the EMA's ``n_averaged``) are likewise converted
    between integer dtypes. Entries the model keeps as non-tensors (``_extra_state``) are not checked.
    """
    def refuse(what: str, advice: str = "use the model/data/sde settings it was trained with") -> UserError:
        return UserError(f"checkpoint {path} does not fit the configured model ({what}); {advice}")

    own = module.state_dict()
    damaged = "it is damaged or not a checkpoint of this model: pick another file"
    for key, value in state_dict.items():
        if key in own and not torch.is_tensor(own[key]):
            continue  # a module's _extra_state: whatever that module stores
        if not torch.is_tensor(value):
            raise refuse(f"{key} holds a {type(value).__name__}, not a tensor", damaged)
        if value.layout != torch.strided or value.is_meta:
            raise refuse(f"{key} is a {'meta' if value.is_meta else value.layout} tensor, not a dense one with "
                         "values", damaged)
    unexpected = [k for k in state_dict if k not in own]
    if unexpected:
        raise refuse(f"{unexpected[0]!s} is in it but not in the model")
    missing = [k for k in own if k not in state_dict]
    wrong = [k for k in own if k in state_dict and torch.is_tensor(own[k]) and state_dict[k].shape != own[k].shape]
    if missing or wrong:
        key = (wrong or missing)[0]
        what = (f"{key} has shape {tuple(state_dict[key].shape)} there but {tuple(own[key].shape)} here"
                if wrong else f"{key} is missing from it")
        raise refuse(what)
    tensors = [k for k in own if torch.is_tensor(own[k])]
    for key in tensors:
        mine, theirs = _dtype_kind(own[key]), _dtype_kind(state_dict[key])
        if mine != theirs:
            raise refuse(f"{key} is {state_dict[key].dtype} there but {own[key].dtype} here", damaged)
    for key in tensors:
        value = state_dict[key]
        if value.is_floating_point() or value.is_complex():
            if not bool(torch.isfinite(value).all()):
                raise UserError(f"checkpoint {path} holds non-finite values (nan/inf) in {key}; training had diverged "
                                "when it was written: use an earlier checkpoint, e.g. an epoch_*.ckpt next to it")
    for key in tensors:
        if state_dict[key].dtype != own[key].dtype:  # same kind (checked above): convert as load_state_dict would
            state_dict[key] = state_dict[key].to(own[key].dtype)


def check_module_keys(stored_module: Any, cls: type, path: str,
                      given: tuple[str, ...] = ("score_model", "sde")) -> None:
    """Refuse a stored config's ``module:`` section with keys ``cls.__init__`` does not take, in one line.

    The section is spread into ``cls(...)`` as keyword arguments; an unknown key would otherwise be a ``TypeError``.
    Hydra's own keys (``_target_``, ``_convert_``, ...) are left to Hydra.

    Args:
        stored_module: the ``module`` section (a mapping) of the checkpoint's stored config.
        cls: the LightningModule class it is given to (e.g. :class:`~scorelab.lit.module.ScoreModule`).
        path: the checkpoint, for the message.
        given: arguments the caller passes itself (a key of the same name would be given twice).

    Raises:
        UserError: naming the checkpoint, the first unknown key and the keys that are accepted.
    """
    import inspect
    from collections.abc import Mapping

    if not isinstance(stored_module, (Mapping, DictConfig)):
        raise UserError(f"checkpoint {path} is damaged or foreign: its stored module settings are a "
                        f"{type(stored_module).__name__}, not a dict; pass a .ckpt written by train.py")
    params = inspect.signature(cls.__init__).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    accepted = [name for name, p in params.items() if name != "self" and name not in given
                and p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)]
    hydra_keys = {k for k in stored_module if isinstance(k, str) and k.startswith("_") and k.endswith("_")}
    unknown = [str(k) for k in stored_module
               if k not in hydra_keys and (k in given or not (takes_any or k in accepted))]
    if unknown:
        raise UserError(f"checkpoint {path} stores module settings this scorelab does not take ({unknown[0]!r} in "
                        f"module:); {cls.__name__} accepts {', '.join(accepted)}: use the scorelab version that wrote "
                        "it, or remove the key from the checkpoint's scorelab_config")
