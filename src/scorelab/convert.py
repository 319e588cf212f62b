"""``python -m scorelab.convert``: a released score_sde_pytorch checkpoint as a scorelab checkpoint.

The command lives in :mod:`scorelab.cli.convert`; this module is its entry point.
"""
import sys

if __name__ == "__main__":
    from scorelab.cli.convert import main
    from scorelab.cli.errors import run_or_exit

    run_or_exit(main, sys.argv[1:])
