"""The Lightning platform: the score module, data modules, callbacks and loggers."""
from .module import ScoreModule
from .toy_datamodule import ToyDataModule

__all__ = ["ScoreModule", "ToyDataModule"]
