"""The house is layered, and the contract is checked: a lower layer never imports a higher one (pyproject.toml,
``[tool.importlinter]``; ``make lint`` runs the same check)."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from .platform_utils import ROOT


def _lint_imports(cwd: Path) -> subprocess.CompletedProcess:
    exe = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or "lint-imports"
    return subprocess.run([exe, "--no-cache"], cwd=cwd, capture_output=True, text=True, timeout=300)


def test_the_layer_contract_holds():
    res = _lint_imports(ROOT)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-2000:]
    assert "1 kept, 0 broken" in res.stdout


def test_an_upward_import_breaks_the_contract(tmp_path):
    """The contract has teeth: the same tree with one upward import (the SDEs importing the commands) fails."""
    copy = tmp_path / "tree"
    shutil.copytree(ROOT / "src", copy / "src")
    shutil.copy(ROOT / "pyproject.toml", copy / "pyproject.toml")
    sde = copy / "src" / "scorelab" / "sde.py"
    if not sde.exists():
        sde = copy / "src" / "scorelab" / "sde" / "__init__.py"
    sde.write_text(sde.read_text() + "\nfrom scorelab.cli import entry  # noqa: E402,F401\n")
    res = subprocess.run([sys.executable, "-c", "import sys; sys.path.insert(0, 'src'); "
                          "from importlinter.cli import lint_imports; sys.exit(lint_imports(no_cache=True))"],
                         cwd=copy, capture_output=True, text=True, timeout=300)
    assert res.returncode != 0 and "scorelab.sde is not allowed to import scorelab.cli" in res.stdout, res.stdout
