"""Where the checkout's own files are: the project root and its ``conf/`` tree."""
from __future__ import annotations

from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[3]  # src/scorelab/cli/project.py -> the checkout
CONF_DIR = PROJECT_ROOT / "conf"


def conf_dir() -> Path:
    """The shipped ``conf/`` folder: Hydra's primary config folder while a command runs, else the checkout's."""
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized():
        for source in HydraConfig.get().runtime.config_sources:
            if source.provider == "main" and source.schema == "file":
                return Path(source.path)
    return CONF_DIR
