"""What ``sample.py`` can do with a model (``conf/task``): draw samples (``Sample``), of chosen classes (``Labels``),
with pictures that teach (``Teach``), or solve an image task with an unconditional model (``Inpaint``,
``Colorize``, ``Interpolate``; the mathematics in :mod:`scorelab.tasks.conditional`)."""
from .base import Task
from .draw import ClassRequest, Labels, Sample, Teach
from .images import Colorize, ImageTask, Inpaint, Interpolate

__all__ = ["ClassRequest", "Colorize", "ImageTask", "Inpaint", "Interpolate", "Labels", "Sample", "Task", "Teach"]
