"""Other implementations' files as scorelab checkpoints: ``python -m scorelab.convert --help``."""
