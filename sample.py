"""Sample from a trained checkpoint or the exact toy oracle: `python sample.py --help` lists the options.

Under `torchrun --nproc_per_node=N sample.py ...` every rank draws its share of the seed range (the samples equal a
1-process run's) and rank 0 writes the one run folder.
"""
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from scorelab.cli.entry import run_command, run_job
from scorelab.core.distributed import hydra_run_folder_on_rank_zero

CONF = Path(__file__).resolve().parent / "conf"


@hydra.main(version_base="1.3", config_path="conf", config_name="sample")
def main(cfg: DictConfig) -> None:
    from scorelab.cli.sample import sample

    run_job(sample, cfg)


if __name__ == "__main__":
    from scorelab.cli.sample import sampler_keys_as_appends

    sys.argv = sampler_keys_as_appends(sys.argv)  # sampler.steps=20 changes the checkpoint's own sampler
    with hydra_run_folder_on_rank_zero():
        run_command(main, CONF, "sample")
