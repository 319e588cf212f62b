"""MkDocs hooks of the documentation site (``hooks:`` in mkdocs.yml): the pages generated at every build.

- ``reference/config.md``: the configuration reference, from ``conf/`` (``docs/gen_config_reference.py``);
- ``reference/api/<module>.md``: one API page per top-level module of ``src/scorelab``, rendered by mkdocstrings
  from the docstrings (the package's docstring, then every submodule).

Nothing of these pages is written to ``docs/``. :func:`generated_pages` is importable without MkDocs, so the tests
can check the nav against it.
"""
from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "scorelab"
API = "reference/api"


def _generator():
    """docs/gen_config_reference.py, imported by its path (docs/ is no package)."""
    name = "scorelab_docs_gen_config_reference"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name("gen_config_reference.py"))
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses look their module up there
        spec.loader.exec_module(module)
    return sys.modules[name]


def api_modules(package: Path = PACKAGE) -> list[str]:
    """The top-level modules of scorelab that get an API page (``sde``, ``sampling``, ``domains``, ...)."""
    names = [p.name for p in package.iterdir() if p.is_dir() and (p / "__init__.py").exists()]
    names += [p.stem for p in package.glob("*.py") if p.stem != "__init__"]
    return sorted(n for n in names if not n.startswith("_"))


def _submodules(name: str, package: Path = PACKAGE) -> list[str]:
    folder = package / name
    if not folder.is_dir():
        return []
    found = []
    for path in sorted(folder.rglob("*.py")):
        parts = path.relative_to(package.parent).with_suffix("").parts
        if path.stem == "__init__":
            parts = parts[:-1]
            if len(parts) == 2:  # the page's own package
                continue
        if any(p.startswith("_") for p in parts):
            continue
        found.append(".".join(parts))
    return found


def api_page(name: str) -> str:
    """The Markdown of the API page of ``scorelab.<name>``: mkdocstrings directives, one per module."""
    full = f"scorelab.{name}"
    out = [f"# `{full}`", "", f"::: {full}", "    options:", "      show_root_heading: false",
           "      members: false" if _submodules(name) else "      heading_level: 2", ""]
    for module in _submodules(name):
        out += [f"::: {module}", "    options:", "      heading_level: 2", ""]
    return "\n".join(out)


def generated_pages() -> dict[str, str]:
    """``{path in the site: Markdown}`` of every generated page."""
    generator = _generator()
    pages = {generator.PAGE: generator.render()}
    for name in api_modules():
        pages[f"{API}/{name}.md"] = api_page(name)
    return pages


# ------------------------------------------------------------------------------------------------ the hooks
def on_files(files, config):
    """Adds the generated pages to the site (they exist in memory only)."""
    from mkdocs.structure.files import File

    for path, text in generated_pages().items():
        files.append(File.generated(config, path, content=text))
    return files


_ROLE = re.compile(r":(?:py:)?(?:class|func|meth|mod|attr|data|exc|obj|const):(<code[^>]*>)~?")


def on_page_content(html, page, config, files):
    """Drops the Sphinx roles of docstrings (``:class:`~x.X``` shows as ``x.X``); the code span stays."""
    return _ROLE.sub(r"\1", html)


def on_serve(server, config, builder):
    """``make docs-serve`` rebuilds when conf/ or the sources change."""
    for folder in (ROOT / "conf", PACKAGE):
        server.watch(str(folder))
    return server
