"""FID / KID of generated images, or reference statistics: `python fid.py --help` lists the options."""
import hydra
from omegaconf import DictConfig

from scorelab.cli.errors import run_or_exit


@hydra.main(version_base="1.3", config_path="conf", config_name="fid")
def main(cfg: DictConfig) -> None:
    from scorelab.cli.fid import fid

    run_or_exit(fid, cfg)


if __name__ == "__main__":
    main()
