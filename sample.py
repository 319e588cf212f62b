"""Sample from a trained checkpoint or the exact toy oracle: `python sample.py --help` lists the options."""
import sys

import hydra
from omegaconf import DictConfig

from scorelab.cli.errors import run_or_exit


@hydra.main(version_base="1.3", config_path="conf", config_name="sample")
def main(cfg: DictConfig) -> None:
    from scorelab.cli.sample import sample

    run_or_exit(sample, cfg)


if __name__ == "__main__":
    from scorelab.cli.sample import sampler_keys_as_appends

    sys.argv = sampler_keys_as_appends(sys.argv)  # sampler.steps=20 changes the checkpoint's own sampler
    main()
