"""The contract of a ``sample.py`` task (``conf/task/<name>.yaml``): a class that owns its options and checks them.

``python sample.py ckpt_path=... task=<name> task.<option>=...`` builds the class the yaml names; its constructor
refuses a bad option in one line (:class:`~scorelab.core.errors.UserError`) before any model is loaded, and
:meth:`Task.check_model` refuses a model the task cannot run on once the checkpoint is read.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

from ..core.errors import UserError


def is_int(value: Any) -> bool:
    """A true integer (not a bool)."""
    return isinstance(value, int) and not isinstance(value, bool)


def positive_int(value: Any, key: str, least: int = 1) -> int:
    """``value`` when it is an integer ``>= least``, else a one-line refusal naming ``task.<key>``."""
    if not is_int(value) or value < least:
        what = "a positive integer" if least == 1 else f"an integer >= {least}"
        raise UserError(f"task.{key} must be {what}, got {value!r}")
    return int(value)


class Task:
    """A task of ``sample.py``.

    Attributes:
        name: what ``task=<name>`` selects (the yaml's name).
        images_only: the task needs an image model.
        one_process: the task runs in one process (refused under ``torchrun``).
    """

    name: ClassVar[str] = "sample"
    images_only: ClassVar[bool] = False
    one_process: ClassVar[bool] = False

    def check_model(self, shape: Sequence[int], kind: str) -> None:
        """Refuse, in one line, a model whose samples (``shape``, domain ``kind``: ``points`` or ``images``) this
        task cannot work with."""
        if self.images_only and kind != "images":
            raise UserError(f"task={self.name} is for image models; this one makes points of shape {tuple(shape)} "
                            "(sample them with task=sample)")

    def __repr__(self) -> str:
        options = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({options})"
