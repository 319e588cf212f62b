"""Train a score-based generative model: `python train.py --help` lists the config groups."""
import hydra
from omegaconf import DictConfig

from scorelab.cli.errors import run_or_exit


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    from scorelab.cli.train import train

    return run_or_exit(train, cfg)


if __name__ == "__main__":
    main()
