"""Command functions called by the thin ``train.py`` / ``sample.py`` / ``likelihood.py`` entry points (and by tests)."""
from .likelihood import likelihood
from .sample import sample
from .train import train

__all__ = ["likelihood", "sample", "train"]
