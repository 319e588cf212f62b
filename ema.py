"""Post-hoc EMA: rebuild any EMA length from a run's snapshots. `python ema.py --help` lists the options."""
from pathlib import Path

import hydra
from omegaconf import DictConfig

from scorelab.cli.entry import run_command, run_job

CONF = Path(__file__).resolve().parent / "conf"


@hydra.main(version_base="1.3", config_path="conf", config_name="ema")
def main(cfg: DictConfig) -> None:
    from scorelab.cli.posthoc_ema import posthoc_ema

    run_job(posthoc_ema, cfg)


if __name__ == "__main__":
    run_command(main, CONF, "ema")
