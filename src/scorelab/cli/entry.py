"""From a command line to an exit status: what ``train.py``, ``sample.py``, ``likelihood.py`` and ``fid.py`` share.

Each entry point is a thin ``@hydra.main`` function that calls :func:`run_job`, started by :func:`run_command`:

* **Before Hydra runs anything** (:func:`check_command_line`), the command line is composed once: an unknown option,
  group or key, a sweep without ``-m`` or an unreadable override ends in one ``error:`` line with exit status 2 (the
  options of the group, or the closest names; never the advice to append a key with ``+``, which nothing would read),
  and so does a run folder that cannot be created (an unwritable folder, a full disk). Nothing is created first.
* **A single run** (:func:`run_job`): a mistake in config, paths or files is one ``error:`` line and exit status 2,
  and the run folder Hydra made for it is removed if the job wrote nothing into it; a bug keeps its traceback.
* **A sweep** (``-m``): a job that fails is recorded (``job.json`` in its folder: status and the one-line message,
  and in the sweep's ``summary.md``) and the other jobs run; the command exits with status 2 at the end (1 when a
  job failed with a bug) if any job failed. The same holds under the submitit launchers, whose jobs run elsewhere.
"""
from __future__ import annotations

import difflib
import json
import os
import shutil
import sys
import tempfile
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

from omegaconf import DictConfig, OmegaConf

from ..core.errors import UserError
from ..core.io import write_text_atomic
from .errors import describe, is_user_error
from .smoke import apply_smoke

__all__ = ["JOB_RECORD", "check_command_line", "run_command", "run_job"]

JOB_RECORD = "job.json"  # in every sweep job's folder: {"status": "ok" | "failed", "error": ..., "kind": ...}
# Run folders that existed before this command (never removed), once the command line has been checked: a run
# folder this command created and left holding only Hydra's own files is removed when the job stops on a mistake.
_BEFORE: dict[str, set[str]] = {}


class CommandPlan(NamedTuple):
    """What the command line asks for, as far as the entry point needs to know."""

    multirun: bool
    run_dir: str | None  # the run (or sweep) folder, when it could be worked out


def fail(message: str, status: int = 2) -> None:
    """Print ``error: <message>`` (one line) to stderr and exit."""
    print(f"error: {' '.join(message.split())}", file=sys.stderr)
    sys.exit(status)


# ------------------------------------------------------------------------------------------ the command line
def _hydra_args(argv: list[str]):
    from hydra._internal.utils import get_args_parser

    return get_args_parser().parse_args(argv)


def _group_options(conf: Path, group: str) -> list[str]:
    folder = conf / group
    return sorted(p.stem for p in folder.glob("*.yaml")) if folder.is_dir() else []


def _groups(conf: Path) -> list[str]:
    return sorted(str(p.relative_to(conf)) for p in conf.rglob("*") if p.is_dir() and any(p.glob("*.yaml")))


MOVED_SECTIONS = {"teaching": ("task=teach", {"points": "paths"}), "interpolation": ("task=interpolate", {})}
"""Top-level sections of ``sample.yaml`` that became options of a task: ``teaching.points`` is now ``task=teach
task.paths``."""


def _owners(conf: Path, group: str, key: str) -> list[str]:
    """The options of ``group`` whose yaml sets ``key``."""
    found = []
    for option in _group_options(conf, group):
        values = OmegaConf.load(conf / group / f"{option}.yaml")
        if isinstance(values, DictConfig) and key in values and key != "_target_":
            found.append(option)
    return found


def _write_in(group: str, options: list[str], key: str, value: str) -> str:
    """``it is an option of task=labels: write task=labels task.label=3`` (several options: any of them)."""
    setting = f"{group.replace('/', '.')}.{key}={value or '...'}"
    if len(options) == 1:
        return f"it is an option of {group}={options[0]}: write {group}={options[0]} {setting}"
    named = ", ".join(f"{group}={o}" for o in options[:4]) + (", ..." if len(options) > 4 else "")
    return f"it is an option of {named}: write {setting} with one of them"


def _moved_into_group(parts: list[str], value: str, conf: Path, cfg: DictConfig | None) -> str | None:
    """Where an unknown ``key`` lives: ``did you mean optimizer.lr?`` when the chosen option of a group has it,
    ``write task=labels task.label=<value>`` when another option's yaml has it (``conf/task/labels.yaml``; also for
    ``task.label`` under another task), and ``write task=teach`` when it names an option of a group."""
    groups = [g for g in _groups(conf) if not g.startswith("hydra") and g != "experiment"]
    choices = OmegaConf.select(cfg, "hydra.runtime.choices", default=None) if cfg is not None else None
    if isinstance(choices, DictConfig):  # only the groups this command has (train.py has no task group)
        groups = [g for g in groups if g in choices]
    if parts[0] in MOVED_SECTIONS and len(parts) == 2:
        choice, renamed = MOVED_SECTIONS[parts[0]]
        group = choice.split("=")[0]
        if group in groups:
            key = renamed.get(parts[1], parts[1])
            return f"{parts[0]} is now {choice}: write {choice} {group}.{key}={value or '...'}"
    if len(parts) == 2 and parts[0] in groups:  # task.guidance with task=sample
        options = _owners(conf, parts[0], parts[1])
        return _write_in(parts[0], options, parts[1], value) if options else None
    if len(parts) != 1:
        return None
    key = parts[0]
    for group in groups:
        node = group.replace("/", ".")
        chosen = OmegaConf.select(cfg, node, default=None) if cfg is not None else None
        if isinstance(chosen, DictConfig) and key in chosen:
            return f"did you mean {node}.{key}?"
    for group in groups:  # labels=all: an option of task=labels (before: labels is also the name of that option)
        options = _owners(conf, group, key)
        if options:
            return _write_in(group, options, key, value)
    for group in groups:
        if key in _group_options(conf, group):
            return f"{key} is an option of the group {group}: write {group}={key}"
    return None


def _first_values(overrides: list[str]) -> tuple[list[str], list[list[str]]]:
    """The overrides with every sweep reduced to its first value, and one variant per other value of each sweep
    (so every value is composed once, not every combination)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(overrides)
    base, sweeps = [], []
    for i, override in enumerate(parsed):
        if override.is_sweep_override():
            try:
                values = list(override.sweep_string_iterator())
            except Exception:  # interval(...) and other sweeps Hydra's sweepers sample: the key must still exist
                values = []
            key = override.get_key_element()
            if not values:
                base.append(None)
                continue
            base.append(f"{key}={values[0]}")
            sweeps.append((i, [f"{key}={v}" for v in values[1:]]))
        else:
            base.append(overrides[i])
    variants = []
    for i, others in sweeps:
        for other in others:
            variant = list(base)
            variant[i] = other
            variants.append([o for o in variant if o is not None])
    return [o for o in base if o is not None], variants


def _compose(conf: Path, config_name: str, overrides: list[str]) -> DictConfig:
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(str(conf), version_base="1.3", job_name=config_name):
        return compose(config_name=config_name, overrides=overrides, return_hydra_config=True)


def _culprit(conf: Path, config_name: str, overrides: list[str]) -> tuple[int, DictConfig | None]:
    """The override whose removal lets the command line compose, and the config composed without it."""
    for i in range(len(overrides)):
        rest = overrides[:i] + overrides[i + 1:]
        try:
            return i, _compose(conf, config_name, rest)
        except Exception:
            continue
    return -1, None


def _unknown_key_message(key: str, cfg: DictConfig | None, conf: Path, value: str = "") -> str:
    """``<key>: no such setting; did you mean <closest>?`` with the keys that do exist there (or, for a key that
    is now an option of a config group, how to write it there)."""
    parts = key.lstrip("+~").split(".")
    moved = _moved_into_group(parts, value, conf, cfg)
    if moved:
        return f"{'.'.join(parts)}: no such setting; {moved}"
    node: Any = OmegaConf.to_container(cfg, resolve=False) if cfg is not None else {}
    depth = 0
    while depth < len(parts) - 1 and isinstance(node, dict) and isinstance(node.get(parts[depth]), dict):
        node, depth = node[parts[depth]], depth + 1
    where, missing = ".".join(parts[:depth]), parts[depth]
    names = [str(k) for k in node if k != "_target_"] if isinstance(node, dict) else []
    if not where:  # the top level: the config's keys and the groups of conf/, but not Hydra's own settings
        choices = OmegaConf.select(cfg, "hydra.runtime.choices", default=None) if cfg is not None else None
        groups = list(choices) if isinstance(choices, DictConfig) else _groups(conf)
        names = sorted((set(names) | {str(g).split("/")[0] for g in groups}) - {"hydra"})
    close = difflib.get_close_matches(missing, names, n=3, cutoff=0.6)
    prefix = f"{where}." if where else ""
    if close:
        hint = f"did you mean {' or '.join(prefix + c for c in close)}?"
    elif names:
        hint = f"the settings {'of ' + where if where else 'at the top level'} are: {', '.join(names)}"
    else:  # task.colour with task=sample, which takes no settings
        chosen = OmegaConf.select(cfg, f"hydra.runtime.choices.{where}", default=None) if cfg is not None else None
        hint = f"{where}={chosen} takes no settings" if chosen else f"{where} takes no settings"
    return f"{'.'.join(parts)}: no such setting; {hint}"


def _composition_message(exc: Exception, overrides: list[str], conf: Path, config_name: str,
                         script: str) -> str:
    from hydra.errors import MissingConfigException, OverrideParseException

    text = str(exc)
    first = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
    if isinstance(exc, OverrideParseException):
        return f"cannot read the command line: {first}; write overrides as key=value or group=option"
    if isinstance(exc, MissingConfigException) and "Could not find '" in text:
        missing = text.split("Could not find '", 1)[1].split("'", 1)[0]
        group, _, option = missing.rpartition("/")
        options = list(getattr(exc, "options", None) or _group_options(conf, group))
        if group and options:
            close = difflib.get_close_matches(option, options, n=2, cutoff=0.6)
            hint = f" (did you mean {' or '.join(close)}?)" if close else ""
            return f"{group}={option}: no such option{hint}; {group} is one of: {', '.join(options)}"
        return f"{missing}: no such config; {first}"
    if "Ambiguous value for argument" in text:
        arg = text.split("Ambiguous value for argument '", 1)[1].split("'", 1)[0]
        return (f"{arg}: a comma-separated list is a sweep; run it with -m (python {script} -m {arg}), or write a "
                "list value as key=[a,b] or a string as key='a,b'")
    if "Could not override '" in text or "Could not append to config" in text or "not in struct" in text:
        key = text.split("'", 2)[1] if "'" in text else ""
        i, cfg = _culprit(conf, config_name, overrides)
        value = ""
        if i >= 0:
            key, _, value = overrides[i].partition("=")
        return _unknown_key_message(key, cfg, conf, value)
    return f"the command line does not compose: {' '.join(text.split())}"


def check_command_line(conf: str | os.PathLike, config_name: str, argv: list[str], script: str = "train.py"
                       ) -> CommandPlan:
    """Compose the command line once, before Hydra creates anything; turn every composition error into one line.

    Args:
        conf: the entry point's ``conf/`` folder.
        config_name: its primary config (``train``, ``sample``, ...).
        argv: the arguments after the script name.
        script: the script, for messages.

    Returns:
        Whether it is a sweep, and the run (or sweep) folder it will write.

    Raises:
        UserError: one line: an unknown option (with the group's options), an unknown group or key (with the
            closest names), a sweep without ``-m``, an unreadable override, a run folder that cannot be created.
    """
    conf = Path(conf)
    args = _hydra_args(argv)
    if (args.help or args.hydra_help or args.shell_completion or args.info
            or args.experimental_rerun or args.config_dir or args.config_path):
        return CommandPlan(False, None)  # Hydra's own business
    modes = [flag for flag, on in (("-m", args.multirun), ("--cfg", args.cfg), ("--run", args.run)) if on]
    if len(modes) > 1:
        raise UserError(f"{' and '.join(modes)} cannot go together: to see the config of a sweep's first job (or what "
                        f"a launcher would submit), drop -m and give one value per key: python {script} ... --cfg all")
    config_name = args.config_name or config_name
    overrides = list(args.overrides)
    try:
        if args.multirun:
            base, variants = _first_values(overrides)
        else:
            base, variants = overrides, []
        cfg = _compose(conf, config_name, base)
        for variant in variants:
            _compose(conf, config_name, variant)
    except Exception as exc:
        raise UserError(_composition_message(exc, overrides, conf, config_name, script)) from None
    multirun = bool(args.multirun) or str(OmegaConf.select(cfg, "hydra.mode", default="")).endswith("MULTIRUN")
    if args.cfg:
        return CommandPlan(multirun, None)
    run_dir = _run_folder(cfg, multirun)
    if run_dir is not None:
        _BEFORE.setdefault("ancestors", set()).add(str(check_writable(run_dir)))
        if Path(run_dir).exists():
            _BEFORE.setdefault("existing", set()).add(str(Path(run_dir).absolute()))
    return CommandPlan(multirun, run_dir)


def _run_folder(cfg: DictConfig, multirun: bool) -> str | None:
    """The folder Hydra will create (resolved now; a time stamp may differ by the time it is made)."""
    try:
        key = "hydra.sweep.dir" if multirun else "hydra.run.dir"
        return str(OmegaConf.select(cfg, key, throw_on_resolution_failure=True))
    except Exception:
        return None  # it needs Hydra's runtime: Hydra will say so itself


def check_writable(folder: str | os.PathLike) -> Path:
    """Refuse, in one line, a folder that cannot be created or written (a file in the way, no permission, a
    read-only or full disk). Nothing is left behind: the probe is removed.

    Returns:
        The nearest existing folder above (or at) ``folder``.
    """
    folder = Path(folder).expanduser().absolute()
    existing = folder
    while not existing.exists():
        if existing.is_symlink():
            raise UserError(f"cannot create the run folder {folder}: {existing} is a link to a folder that does not "
                            "exist; mount it, or write elsewhere with paths.log_dir=<folder> (or hydra.run.dir=...)")
        existing = existing.parent
    if not existing.is_dir():
        raise UserError(f"cannot create the run folder {folder}: {existing} is a file, not a folder; write elsewhere "
                        "with paths.log_dir=<folder> (or hydra.run.dir=...)")
    try:
        probe = Path(tempfile.mkdtemp(prefix=".scorelab-probe-", dir=existing))
        try:
            with open(probe / "probe", "wb") as f:
                f.write(b"\0" * 65536)  # a full disk says so here, before Hydra writes its first file
                f.flush()
                os.fsync(f.fileno())
        finally:
            shutil.rmtree(probe, ignore_errors=True)
    except OSError as exc:
        raise UserError(f"cannot write the run folder {folder}: {exc.strerror or exc} in {existing}; free space or "
                        "write elsewhere with paths.log_dir=<folder> (or hydra.run.dir=...)") from None
    return existing


def run_command(main: Callable[[], Any], conf: str | os.PathLike, config_name: str,
                argv: list[str] | None = None) -> None:
    """Check the command line, run Hydra's ``main`` (one job or a sweep), and exit non-zero if a sweep job failed.

    Args:
        main: the ``@hydra.main`` function (it reads ``sys.argv`` itself).
        conf: the entry point's ``conf/`` folder.
        config_name: its primary config.
        argv: the arguments to check (default ``sys.argv[1:]``).
    """
    from .sweep import last_sweep

    argv = sys.argv[1:] if argv is None else list(argv)
    script = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else f"{config_name}.py"
    if os.environ.get("HYDRA_FULL_ERROR") == "1":
        plan = check_command_line(conf, config_name, argv, script)
    else:
        try:
            plan = check_command_line(conf, config_name, argv, script)
        except UserError as exc:
            fail(str(exc))
    main()
    if plan.multirun:
        sweep = last_sweep()
        if sweep is not None and sweep.failed:
            first = sweep.failed[0]
            bug = any("bug" in str(row.get("status")) for row in sweep.failed)
            fail(f"{len(sweep.failed)} of {sweep.jobs} sweep jobs failed (job {first['job']}: {first.get('error')}); "
                 f"the others ran. Summary: {sweep.summary}", status=1 if bug else 2)


# ----------------------------------------------------------------------------------------------- one job
def _in_sweep() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def _job_name() -> str:
    from hydra.core.hydra_config import HydraConfig

    job = HydraConfig.get().job
    overrides = " ".join(job.override_dirname.split(",")) if job.get("override_dirname") else ""
    return f"job {job.num}" + (f" ({overrides})" if overrides else "")


def _output_dir(cfg: DictConfig) -> Path | None:
    try:
        return Path(str(cfg.paths.output_dir))
    except Exception:
        return None


def remove_if_unused(folder: Path | None) -> bool:
    """Remove a run folder that this command created and that holds nothing but Hydra's ``.hydra/`` and logs."""
    if folder is None or "ancestors" not in _BEFORE or not folder.is_dir():
        return False
    folder = folder.absolute()
    if str(folder) in _BEFORE.get("existing", set()):
        return False
    for path in folder.rglob("*"):
        inside_hydra = path.relative_to(folder).parts[0] == ".hydra"
        if path.is_file() and not (inside_hydra or path.suffix == ".log"):
            return False
    shutil.rmtree(folder, ignore_errors=True)
    for parent in folder.parents:  # and the folders above it that this command created (logs/train/runs)
        if str(parent) in _BEFORE["ancestors"] or not any(str(parent).startswith(a) for a in _BEFORE["ancestors"]):
            break
        try:
            parent.rmdir()  # only if empty
        except OSError:
            break
    return True


def _record(folder: Path | None, record: dict[str, Any]) -> None:
    if folder is not None and folder.is_dir():
        try:
            write_text_atomic(folder / JOB_RECORD, json.dumps(record, indent=2))
        except OSError:
            pass  # the summary then says the job left no record


def run_job(fn: Callable[[DictConfig], Any], cfg: DictConfig) -> Any:
    """Run a command's job function under the rules of the module docstring.

    Single run: a user error prints one ``error:`` line and exits with status 2 (removing the run folder if the job
    wrote nothing into it); a bug propagates with its traceback, after a line naming where it was raised.

    Sweep job: any exception is printed (one line, or the traceback of a bug), recorded in the job's ``job.json``,
    and the job returns ``None`` so that the sweep goes on.
    """
    from .console import start_job

    start_job()  # scorelab's and Lightning's messages into <run folder>/<command>.log; known noise filtered
    sweep = _in_sweep()
    folder = _output_dir(cfg)
    try:
        apply_smoke(cfg)  # SCORELAB_SMOKE=1: the same command with its work shrunk (scorelab.cli.smoke)
        value = fn(cfg)
    except Exception as exc:  # noqa: BLE001 - every failure is reported; bugs keep their traceback
        user = is_user_error(exc)
        full = os.environ.get("HYDRA_FULL_ERROR") == "1"
        if not sweep:
            if not user or full:
                if not user:
                    where = traceback.extract_tb(exc.__traceback__)[-1]
                    print(f"{type(exc).__name__} at {where.filename}:{where.lineno} ({where.name}): a bug, not a "
                          "config mistake; the traceback follows", file=sys.stderr)
                raise
            remove_if_unused(folder)
            fail(f"{describe(exc)} (HYDRA_FULL_ERROR=1 shows the traceback)")
        message = describe(exc)
        if user and not full:
            print(f"error: {_job_name()}: {message}", file=sys.stderr)
        else:
            traceback.print_exception(exc, file=sys.stderr)
            print(f"error: {_job_name()} failed with a bug ({type(exc).__name__}); the sweep goes on", file=sys.stderr)
        _record(folder, {"status": "failed", "kind": "config" if user else "bug", "error": message})
        return None
    if sweep:
        _record(folder, {"status": "ok", "return": value if isinstance(value, (int, float, str)) else None})
    return value
