"""The documentation site (mkdocs.yml): the generated configuration reference holds every group, option, key and
comment of ``conf/``, every page of ``docs/`` is in the nav (and every nav entry exists), and the site builds with
``--strict`` when MkDocs is installed (a slow test: ``make docs`` installs MkDocs and CI builds the site that way
after the tests).
"""
from __future__ import annotations

import html
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
CONF = ROOT / "conf"


def _load(name: str):
    """A module of docs/ (no package), imported by its path."""
    key = f"scorelab_docs_{name}"
    if key not in sys.modules:
        spec = importlib.util.spec_from_file_location(key, DOCS / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[key] = module
        spec.loader.exec_module(module)
    return sys.modules[key]


gen = _load("gen_config_reference")
hooks = _load("hooks")


# ------------------------------------------------------------------------------- the configuration reference
def _plain(markdown: str) -> str:
    """The page as text: escapes and entities undone, whitespace runs made one space."""
    text = html.unescape(re.sub(r"\\([\\*_\[\]|`])", r"\1", markdown))
    return re.sub(r"\s+", " ", text)


def _keys(node, path: str = ""):
    """The dotted paths of every mapping key of a loaded yaml (lists are values; their items are not walked)."""
    if isinstance(node, dict):
        for key, value in node.items():
            if path == "" and key == "defaults":
                continue
            full = f"{path}.{key}" if path else str(key)
            yield full, value
            yield from _keys(value, full)


def _comments(text: str) -> list[str]:
    """Every comment of a yaml file, read without the generator: from the first ``#`` that starts a line, or
    follows a space with the quotes before it balanced (``'a # b'`` is a value)."""
    found = []
    for line in text.splitlines():
        for match in re.finditer(r"(?:^|(?<=\s))#", line):
            before = line[:match.start()]
            if before.count("'") % 2 == 0 and before.count('"') % 2 == 0:
                comment = re.sub(r"\s+", " ", line[match.end():].strip())
                if comment and not comment.startswith("@package"):
                    found.append(comment)
                break
    return found


def missing_from_reference(page: str, conf: Path) -> list[str]:
    """What of ``conf`` the reference ``page`` lacks, one line each: a group, an option, a key (under the name
    it has on the command line, in a row with a value when it holds one) or a comment."""
    plain = _plain(page)
    problems = []
    for path in sorted(conf.rglob("*.yaml")):
        folder = path.parent.relative_to(conf).as_posix()
        group = "" if folder == "." else folder
        where = f"conf/{path.relative_to(conf).as_posix()}"
        if group and not re.search(rf"^\| `{re.escape(group)}` \|", page, re.M):
            problems.append(f"group `{group}` is no row of the groups table")
        title = f"`{group}/{path.stem}`" if group else f"`{path.stem}.yaml`"
        if not re.search(rf"^#+ {re.escape(title)}", page, re.M):
            problems.append(f"{where}: no section {title}")
            continue
        section = page.split(title, 1)[1].split("\n## ", 1)[0].split("\n### ", 1)[0]
        text = path.read_text()
        loaded = yaml.safe_load(text) or {}
        prefix = gen.parse(text, group, path.stem).prefix
        for key, value in _keys(loaded):
            row = re.search(rf"^\| `{re.escape(prefix + key)}` \| (.*?) \|", section, re.M)
            if row is None:
                problems.append(f"{where}: key `{prefix + key}` is not in the reference")
            elif not isinstance(value, (dict, list)) and value is not None and not row[1].strip():
                problems.append(f"{where}: key `{prefix + key}` has no value in the reference")
        for comment in _comments(text):
            if comment not in plain:
                problems.append(f"{where}: comment {comment!r} is not in the reference")
    return problems


@pytest.fixture(scope="module")
def reference() -> str:
    return gen.render(CONF)


def test_the_reference_holds_every_group_option_key_and_comment_of_conf(reference):
    problems = missing_from_reference(reference, CONF)
    assert not problems, "the generated configuration reference lacks:\n" + "\n".join(problems)
    groups = {p.parent.relative_to(CONF).as_posix() for p in CONF.rglob("*.yaml")} - {"."}
    assert {"callbacks/fid", "hydra/launcher", "sde", "sampler"} <= groups  # nested groups are walked too
    for entry in ("train", "sample", "likelihood", "fid", "ema"):
        assert f"### `{entry}.yaml`" in reference


def test_the_parser_reads_the_keys_pyyaml_reads():
    """Line by line (to keep the comments), yet the same keys as a yaml parser, in every file of conf/."""
    for path in sorted(CONF.rglob("*.yaml")):
        text = path.read_text()
        parsed = {e.path for e in gen.parse(text).entries if "[" not in e.path}
        assert parsed == {key for key, _ in _keys(yaml.safe_load(text) or {})}, path


def test_the_reference_names_keys_as_the_command_line_does(reference):
    rows = dict(re.findall(r"^\| `([^`]+)` \| (`[^|]*`|) \|", reference, re.M))
    assert rows["sde.beta_max"] == "`20.0`"
    assert "| `callbacks.fid.n_samples` | `2000` |" in reference  # a nested group: its package
    assert rows["hydra.launcher.tasks_per_node"] == "`8`"
    assert rows["module.ema_decay"] == "`0.999`"                # an entry config: the top level
    mnist_small = reference.split("### `experiment/mnist_small`", 1)[1].split("\n### ", 1)[0]
    assert "| `data.batch_size` | `128` |" in mnist_small      # @package _global_: the keys at the top
    assert rows["data.mixture.covs[0]"] == "`[[0.25, 0.0], [0.0, 0.25]]`"
    assert "| `sde.beta_min` | `0.1` |" in reference
    # the comment beside a key, and the leading comment of an option
    assert re.search(r"^\| `module\.nonfinite` \| `skip` \| NaN/Inf loss", reference, re.M)
    assert "Variance-preserving SDE (DDPM's continuous limit)" in reference
    # a block scalar stays one value, its `#` lines no comments
    assert "| `hydra.help.footer` | (the text below) |" in reference


def test_a_new_option_group_key_and_comment_are_in_the_reference(tmp_path, reference):
    conf = tmp_path / "conf"
    shutil.copytree(CONF, conf)
    (conf / "sde" / "my_sde.yaml").write_text(
        "# My new forward process.\n_target_: scorelab.sde.VPSDE\nbeta_min: 0.3    # a lower start\n")
    with (conf / "sampler" / "pc.yaml").open("a") as f:
        f.write("# above the new key\nnew_key: 7\nnested:\n  inner: 'a # not a comment'   # beside inner\n")
    (conf / "callbacks" / "extra").mkdir()
    (conf / "callbacks" / "extra" / "default.yaml").write_text("every_n_steps: 5\n")

    # the reference of the old conf/ misses each of them: the check is not hollow
    stale = missing_from_reference(reference, conf)
    for expected in ("no section `sde/my_sde`", "key `sampler.new_key`", "key `sampler.nested.inner`",
                     "'above the new key'", "'beside inner'", "group `callbacks/extra`"):
        assert any(expected in p for p in stale), f"{expected} not reported in {stale}"

    fresh = gen.render(conf)
    assert missing_from_reference(fresh, conf) == []
    assert "| `sde.beta_min` | `0.3` | a lower start |" in fresh and "My new forward process." in fresh
    assert "| `sampler.new_key` | `7` | above the new key |" in fresh
    assert "| `sampler.nested.inner` | `'a # not a comment'` | beside inner |" in fresh
    assert "| `callbacks.extra.every_n_steps` | `5` |" in fresh
    assert re.search(r"^\| `sde` \| .*\[`my_sde`\]\(#sde-my-sde\)", fresh, re.M)


def test_the_reference_is_a_page_of_the_site():
    pages = hooks.generated_pages()
    assert pages[gen.PAGE] == gen.render(CONF)
    assert "](../configuration.md)" in pages[gen.PAGE]


# ------------------------------------------------------------------------------------------------- the nav
def _nav_paths(node) -> list[str]:
    if isinstance(node, str):
        return [node] if node.endswith(".md") else []
    if isinstance(node, dict):
        return [p for value in node.values() for p in _nav_paths(value)]
    if isinstance(node, list):
        return [p for item in node for p in _nav_paths(item)]
    return []


def _mkdocs_config() -> dict:
    return yaml.safe_load((ROOT / "mkdocs.yml").read_text())


def test_every_page_is_in_the_nav_and_every_nav_entry_exists():
    config = _mkdocs_config()
    assert config["docs_dir"] == "docs" and config["strict"] is True  # a warning fails the build
    assert config["validation"]["links"]["not_found"] == config["validation"]["links"]["anchors"] == "warn"
    nav = _nav_paths(config["nav"])
    duplicates = sorted({p for p in nav if nav.count(p) > 1})
    assert not duplicates, f"mkdocs.yml lists these pages twice: {duplicates}"
    generated = set(hooks.generated_pages())
    written = {p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.md")}
    assert not written & generated, f"generated pages also written in docs/: {sorted(written & generated)}"
    missing = sorted((written | generated) - set(nav))
    assert not missing, f"pages of docs/ (or generated) that mkdocs.yml's nav lacks: {missing}"
    dangling = sorted(set(nav) - written - generated)
    assert not dangling, f"mkdocs.yml's nav names pages that do not exist: {dangling}"


def test_every_module_of_scorelab_has_an_api_page():
    modules = hooks.api_modules()
    assert {"sde", "sampling", "objectives", "models", "lit", "metrics", "tasks", "guidance"} <= set(modules)
    nav = _nav_paths(_mkdocs_config()["nav"])
    for name in modules:
        assert f"{hooks.API}/{name}.md" in nav
    page = hooks.api_page("sampling")
    assert page.count(":::") >= 10 and "::: scorelab.sampling.pc" in page


# ---------------------------------------------------------------------------------------- the strict build
@pytest.mark.slow
def test_the_site_builds_strict(tmp_path):
    """The whole site, as `make docs` builds it: a broken link, anchor, nav entry or API reference fails.

    Slow (5 to 20 s): CI runs `make docs` after `make test`, the same strict build from a fresh install, so the
    quick suite leaves it out; `make test-all` runs it where MkDocs is installed."""
    if importlib.util.find_spec("mkdocs") is None or importlib.util.find_spec("mkdocstrings") is None:
        pytest.skip("MkDocs is not installed: `make docs` installs the docs extra (CI builds the site that way)")
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--quiet", "--site-dir",
                           str(tmp_path / "site")], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert done.returncode == 0, f"mkdocs build --strict failed:\n{done.stdout}\n{done.stderr}"
    site = tmp_path / "site"
    assert (site / "index.html").exists() and (site / "reference" / "config.html").exists()
    api = (site / "reference" / "api" / "sde.html").read_text()
    assert "VPSDE" in api and ":class:" not in api
    assert time.perf_counter() - start < 120
