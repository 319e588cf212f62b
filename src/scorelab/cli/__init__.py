"""Command functions called by the thin ``train.py`` / ``sample.py`` entry points (and by tests)."""
from .sample import sample
from .train import train

__all__ = ["sample", "train"]
