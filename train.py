"""Train a score-based generative model: `python train.py --help` lists the config groups."""
from pathlib import Path

import hydra
from omegaconf import DictConfig

from scorelab.cli.entry import run_command, run_job

CONF = Path(__file__).resolve().parent / "conf"


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    from scorelab.cli.train import train

    return run_job(train, cfg)


if __name__ == "__main__":
    run_command(main, CONF, "train")
