"""Reading a ``train.py`` run back: the one path from ``ckpt_path=`` (or ``task.classifier=``) to a checked config.

Every command that rebuilds a model from a checkpoint goes through :func:`read_stored_run`: the same forms of the
setting (a ``.ckpt`` file, a run folder, ``last``, ``auto``; :func:`~scorelab.cli.resume.resolve_ckpt_path`), the
same safe load (``torch.load(weights_only=True)``), the same refusal of stored configs that would build anything the
shipped ``conf/`` does not (:mod:`scorelab.cli.safety`), and the same data folder on this machine
(:func:`data_folder`).
"""
from __future__ import annotations

from typing import Any, NamedTuple

from omegaconf import DictConfig, OmegaConf, open_dict

from .common import load_checkpoint
from .errors import UserError
from .resume import resolve_ckpt_path
from .safety import check_stored_config, upgrade_stored_config


class StoredRun(NamedTuple):
    """A checkpoint read back: its path, its contents (weights) and its checked training config."""

    path: str
    checkpoint: dict[str, Any]
    config: DictConfig


def data_folder(cfg: DictConfig) -> str | None:
    """The data folder every reader of this command uses: ``data.data_dir`` when the command's data config has one,
    else ``paths.data_dir`` (``$SCORELAB_DATA``, else ``./data``), which is also ``data.data_dir``'s default."""
    data = cfg.get("data")
    value = data.get("data_dir") if isinstance(data, DictConfig) else None
    value = value if value is not None else cfg.paths.get("data_dir")
    return None if value is None else str(value)


def standalone_config(data_dir: str | None = None) -> DictConfig:
    """The settings :func:`read_stored_run` needs, for callers outside a command (notebooks, benches): the current
    folder as run folder, and ``data_dir`` as data folder (None: the stored run's own folder is kept)."""
    return OmegaConf.create({"paths": {"output_dir": ".", "data_dir": None if data_dir is None else str(data_dir)}})


def read_stored_run(value: Any, cfg: DictConfig, key: str = "ckpt_path") -> StoredRun:
    """Resolve, load and check the checkpoint that ``<key>=value`` names, for a command configured by ``cfg``.

    The stored data config is pointed at this machine's data folder (:func:`data_folder`; the training machine's
    folder means nothing here, unless the caller has no folder of its own) and never downloads: reading a model
    back writes nothing.

    Args:
        value: the setting's value (a file, a run folder, ``last`` or ``auto``).
        cfg: the running command's config (its run folder and data folder).
        key: the setting's name, for messages.

    Raises:
        UserError: nothing found, an unreadable file, a checkpoint not written by scorelab's ``train.py``.
        UnsafeFileError: a stored config that names anything ``conf/`` does not build there, or interpolates.
    """
    resolved = resolve_ckpt_path(value, cfg.paths.output_dir, key=key, fresh_start=False)
    if resolved is None:
        raise UserError(f"{key} is empty: pass {key}=<run dir>/checkpoints/last.ckpt or a run folder")
    path, ckpt = load_checkpoint(resolved, key)
    stored = ckpt.get("scorelab_config")
    if stored is None:
        raise UserError(f"{path} has no stored scorelab config; it was not written by scorelab's train.py")
    stored = upgrade_stored_config(stored)  # class names of earlier scorelab versions
    check_stored_config(stored, path)  # before anything from the file is resolved or instantiated
    config = OmegaConf.create(stored)
    data = config.get("data")
    if isinstance(data, DictConfig):
        with open_dict(data):
            folder = data_folder(cfg)
            if "data_dir" in data and folder is not None:
                data.data_dir = folder
            if "download" in data:
                data.download = False
    return StoredRun(path, ckpt, config)
