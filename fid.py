"""FID / KID of generated images, or reference statistics: `python fid.py --help` lists the options."""
from pathlib import Path

import hydra
from omegaconf import DictConfig

from scorelab.cli.entry import run_command, run_job

CONF = Path(__file__).resolve().parent / "conf"


@hydra.main(version_base="1.3", config_path="conf", config_name="fid")
def main(cfg: DictConfig) -> None:
    from scorelab.cli.fid import fid

    run_job(fid, cfg)


if __name__ == "__main__":
    run_command(main, CONF, "fid")
