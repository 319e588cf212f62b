"""Fit a few-step solver's time grid to a trained model and save it with the checkpoint: `python fit_grid.py --help`."""
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from scorelab.cli.entry import run_command, run_job

CONF = Path(__file__).resolve().parent / "conf"


@hydra.main(version_base="1.3", config_path="conf", config_name="fit_grid")
def main(cfg: DictConfig) -> None:
    from scorelab.cli.fit_grid import fit_grid

    run_job(fit_grid, cfg)


if __name__ == "__main__":
    from scorelab.cli.sample import sampler_keys_as_appends

    sys.argv = sampler_keys_as_appends(sys.argv)  # sampler.steps=20 changes the checkpoint's own sampler
    run_command(main, CONF, "fit_grid")
