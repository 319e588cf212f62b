"""What a file from elsewhere may ask scorelab to build: nothing but what the shipped ``conf/`` tree builds.

A checkpoint stores the config of the run that wrote it, and ``sample.py``, ``likelihood.py`` and classifier guidance
rebuild the run from it with Hydra's ``instantiate``. Whoever wrote the file chose those values, so three rules
hold before anything from it is built (docs/guarantees.md, "Safe loading"):

1. **Only shipped targets, and only where they are shipped.** Every ``_target_`` of a stored config must be one that
   scorelab's own ``conf/`` tree names in the same top-level section (``data``, ``sde``, ``model``, ``loss``,
   ``sampler``, ...), or an earlier scorelab name of one (:data:`RENAMED_TARGETS`). No function merely because it
   lives under ``scorelab.``, and no function with side effects such as a file writer: none is shipped as a target.
2. **No interpolation.** A string containing ``${`` anywhere in a stored config (key or value) is refused before
   anything is resolved, so no resolver (``oc.env``, ``oc.create``, ``oc.decode``, ...) ever runs on a file's text
   and no environment value comes from a file. scorelab stores configs resolved, so its own files have none.
3. **Plain values from converter inputs.** The reference config values a ``.pth`` file carries may only be numbers,
   booleans, strings and lists of these (:func:`check_plain_values`).

Nothing is instantiated, imported or resolved while checking.
"""
from __future__ import annotations

import functools
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml

from ..core.errors import UnsafeFileError
from .project import CONF_DIR

__all__ = ["RENAMED_TARGETS", "check_plain_values", "check_stored_config", "shipped_targets",
           "upgrade_stored_config"]

INTERPOLATION = "${"

# Targets that earlier scorelab versions stored under another name: old name -> (today's name, the old class's
# defaults, filled in wherever a stored config left a key out). The networks stored by their own class name are now
# presets (configs) of ``ScoreUNet``.
_UNET_DEFAULTS = dict(in_channels=3, image_size=32, ch=128, ch_mult=[1, 2, 2, 2], num_res_blocks=4,
                      attn_resolutions=[16], dropout=0.1, embedding_type="positional", fourier_scale=16.0,
                      resblock_type="biggan", resamp_with_conv=True, fir=False, fir_kernel=[1, 3, 3, 1],
                      skip_rescale=True, progressive="none", progressive_input="none", progressive_combine="sum",
                      init_scale=0.0)
RENAMED_TARGETS = {
    "scorelab.models.ddpmpp.DDPMpp": ("scorelab.models.ScoreUNet", _UNET_DEFAULTS),
    "scorelab.models.ncsnpp.NCSNpp": ("scorelab.models.ScoreUNet", {
        **_UNET_DEFAULTS, "embedding_type": "fourier", "fir": True, "progressive_input": "residual"}),
    # the objectives left the loose modules losses.py and hybrid.py for scorelab.objectives
    **{f"scorelab.losses.{name}": (f"scorelab.objectives.{name}", {})
       for name in ("DSMLoss", "ISMLoss", "SSMLoss", "DDPMLoss")},
    "scorelab.hybrid.HybridLoss": ("scorelab.objectives.HybridLoss", {}),
    # runs before the console work checkpointed with Lightning's own class (no ranking without validation)
    "lightning.pytorch.callbacks.ModelCheckpoint": ("scorelab.lit.console.ValidatedCheckpoint", {}),
}


SCORE_MODULE = "scorelab.lit.module.ScoreModule"


def upgrade_stored_config(node: Any) -> Any:
    """A stored config (plain containers) with the ``_target_``s of earlier scorelab versions renamed to today's.

    Only exact names in :data:`RENAMED_TARGETS` change, so the check that follows still sees every other name as
    written in the file; and a ``module`` section stored without a ``_target_`` (before it named its class) gets
    :class:`~scorelab.lit.module.ScoreModule`'s.
    """
    upgraded = _rename_targets(node)
    module = upgraded.get("module") if isinstance(upgraded, dict) else None
    if isinstance(module, dict) and "_target_" not in module:
        upgraded["module"] = {"_target_": SCORE_MODULE, **module}
    return upgraded


def _rename_targets(node: Any) -> Any:
    if isinstance(node, Mapping):
        out = {k: _rename_targets(v) for k, v in node.items()}
        renamed = RENAMED_TARGETS.get(out.get("_target_")) if isinstance(out.get("_target_"), str) else None
        if renamed is not None:
            target, defaults = renamed
            out = {**defaults, **out, "_target_": target}  # keys the file has (even null: filled from data) win
        return out
    if isinstance(node, (list, tuple)):
        return [_rename_targets(v) for v in node]
    return node


# ----------------------------------------------------------------------------------------- the shipped targets
_PACKAGE = re.compile(r"^#\s*@package\s+(\S+)", re.MULTILINE)
_SECTION_REFERENCE = re.compile(r"^\$\{(?:oc\.select:)?(\w+)((?:\.\w+)*)(?:,[^}]*)?\}$")


def _walk_targets(node: Any, where: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], str]]:
    """``(key path, target)`` of every ``_target_`` under ``node``."""
    if isinstance(node, Mapping):
        for key, value in node.items():
            if key == "_target_" and isinstance(value, str):
                yield where, value
            else:
                yield from _walk_targets(value, (*where, str(key)))
    elif isinstance(node, list):
        for value in node:
            yield from _walk_targets(value, where)


def _walk_references(node: Any, where: tuple[str, ...] = ()
                     ) -> Iterator[tuple[tuple[str, ...], str, tuple[str, ...]]]:
    """``(key path, section, key path inside it)`` of every value that is an interpolation of (part of) a section,
    such as ``${features}`` or ``${oc.select:data.mixture,null}``."""
    if isinstance(node, Mapping):
        for key, value in node.items():
            yield from _walk_references(value, (*where, str(key)))
    elif isinstance(node, str):
        match = _SECTION_REFERENCE.match(node.strip())
        if match:
            yield where, match.group(1), tuple(k for k in match.group(2).split(".") if k)


@functools.lru_cache(maxsize=4)
def shipped_targets(conf: Path = CONF_DIR) -> dict[str, frozenset[str]]:
    """``{top-level section: the _target_s that conf/ names anywhere inside it}``, read from the yaml files.

    A group file's keys live under its package (``conf/callbacks/fid/default.yaml`` -> ``callbacks.fid``; ``#
    @package _global_`` files at the top). A defaults entry ``/sampler@sampler`` brings the whole ``sampler`` group
    into the section that holds it, a value ``${features}`` the ``features`` section, and ``${data.mixture}`` what
    lies under ``mixture`` in the ``data`` section.
    """
    direct: dict[str, set[str]] = {}
    placed: dict[str, set[tuple[tuple[str, ...], str]]] = {}  # section -> (key path inside it, target)
    groups: dict[str, set[str]] = {}  # group (first folder) -> the targets its files name
    imports: dict[str, set[str]] = {}  # section -> groups whose targets it also holds
    references: dict[str, set[tuple[str, tuple[str, ...]]]] = {}  # section -> (section, key path) it copies
    for path in sorted(Path(conf).rglob("*.yaml")):
        text = path.read_text()
        node = yaml.safe_load(text) or {}
        folders = path.relative_to(conf).parts[:-1]
        header = _PACKAGE.search(text)
        package = header.group(1) if header else ".".join(folders) if folders else "_global_"
        prefix = () if package == "_global_" else tuple(package.split("."))
        if folders and folders[0] == "hydra":
            continue  # Hydra's own settings are never part of a stored job config
        for where, target in _walk_targets({k: v for k, v in node.items() if k != "defaults"}):
            full = (*prefix, *where)
            if full:
                direct.setdefault(full[0], set()).add(target)
                placed.setdefault(full[0], set()).add((full[1:], target))
            if folders:
                groups.setdefault(folders[0], set()).add(target)
        for entry in node.get("defaults") or []:
            name = next(iter(entry), "") if isinstance(entry, Mapping) else str(entry)
            name = name.split(" ")[-1]  # "override /data" -> "/data"
            if "@" in name:
                group, at = name.lstrip("/").split("@", 1)
                full = (*prefix, *at.split(".")) if at != "_global_" else ()
                if full:
                    imports.setdefault(full[0], set()).add(group.split("/")[0])
        for where, section, inside in _walk_references(node):
            full = (*prefix, *where)
            if full and full[0] != section:
                references.setdefault(full[0], set()).add((section, inside))
    allowed = {section: set(targets) for section, targets in direct.items()}
    for section, sources in imports.items():
        for source in sources:
            allowed.setdefault(section, set()).update(groups.get(source, set()) | direct.get(source, set()))
    for section, copies in references.items():  # only what lies under the copied key (not under data.data_dir)
        for source, inside in copies:
            allowed.setdefault(section, set()).update(
                target for path, target in placed.get(source, ()) if path[:len(inside)] == inside)
    return {section: frozenset(targets) for section, targets in allowed.items()}


# ----------------------------------------------------------------------------------------------- the checks
def _refuse(source: str, what: str) -> UnsafeFileError:
    return UnsafeFileError(f"refused {source}: {what}. A config read from a file may only name what scorelab's own "
                           "conf/ names there, and is used as written, never resolved (docs/guarantees.md, "
                           "Safe loading)")


def _check_interpolations(node: Any, source: str, where: str) -> None:
    if isinstance(node, Mapping):
        for key, value in node.items():
            path = f"{where}.{key}" if where else str(key)
            if isinstance(key, str) and INTERPOLATION in key:
                raise _refuse(source, f"its stored config has an interpolation in the key at {where or 'the top'}")
            _check_interpolations(value, source, path)
    elif isinstance(node, (list, tuple)):
        for i, value in enumerate(node):
            _check_interpolations(value, source, f"{where}[{i}]")
    elif isinstance(node, str) and INTERPOLATION in node:
        raise _refuse(source, f"its stored config holds an interpolation (${{...}}) at {where or 'the top'}")


def check_stored_config(node: Any, source: str) -> None:
    """Refuse a stored config that names anything ``conf/`` does not build there, or holds an interpolation.

    Args:
        node: the config as read from the file (plain containers, or an unresolved OmegaConf node).
        source: the file, for the message.

    Raises:
        UnsafeFileError: naming the key path; nothing was resolved, imported or built.
    """
    from omegaconf import DictConfig, ListConfig, OmegaConf

    if isinstance(node, (DictConfig, ListConfig)):
        node = OmegaConf.to_container(node, resolve=False)
    if not isinstance(node, Mapping):
        raise _refuse(source, f"its stored config is a {type(node).__name__}, not a mapping of settings")
    _check_interpolations(node, source, "")
    allowed = shipped_targets()
    for where, target in _walk_targets(node):
        section = where[0] if where else ""
        if target not in allowed.get(section, ()):
            path = ".".join((*where, "_target_"))
            raise _refuse(source, f"its stored config asks to build {target!r} at {path}, which scorelab's conf/ "
                                  f"does not build under {section or 'the top level'!r}")
    for key, value in _items(node):
        if key in ("_args_",) and value:  # positional arguments only ever come from the shipped configs
            raise _refuse(source, "its stored config passes positional arguments (_args_)")


def _items(node: Any) -> Iterator[tuple[Any, Any]]:
    if isinstance(node, Mapping):
        for key, value in node.items():
            yield key, value
            yield from _items(value)
    elif isinstance(node, (list, tuple)):
        for value in node:
            yield from _items(value)


PLAIN = (bool, int, float, str)


def check_plain_values(values: Mapping[str, Any], source: str) -> None:
    """Refuse config values read from a file unless each is a number, boolean, string or list of these (no
    mapping, so no ``_target_``; no interpolation)."""
    for key, value in values.items():
        items = value if isinstance(value, list) else [value]
        if not isinstance(key, str) or not all(isinstance(v, PLAIN) for v in items):
            raise _refuse(source, f"its config value {key!r} is a {type(value).__name__}; only numbers, booleans, "
                                  "strings and lists of these are read")
        if any(isinstance(v, str) and INTERPOLATION in v for v in items) or INTERPOLATION in key:
            raise _refuse(source, f"its config value {key!r} holds an interpolation (${{...}})")
