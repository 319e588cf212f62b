"""The docs' tables of config groups list exactly what ``conf/`` holds, and the contributor guide points at files
that exist.

The completeness of the documentation is carried by the configuration reference that ``docs/gen_config_reference.py``
generates from ``conf/`` at every build of the site (``tests/test_docs_site.py`` checks every option, key and comment
of it): its group table is read here like the hand-written ones, so every group is listed by construction. A
hand-written group table (README.md, docs/configuration.md) is optional, but where there is one it must be exact.

**The convention these tests rely on.** A *group table* is a Markdown table (in README.md or docs/*.md) whose
header row starts with the cells ``group | options``. Each of its rows names one config group in backticks in its
first cell (a folder of ``conf/``: ``data``, or a nested one such as ``callbacks/fid``) and every option of that
group in backticks in its second cell (``conf/<group>/<option>.yaml`` without ``.yaml``); words outside backticks
there (``(default)``) are free, and so is the rest of the row. Any table whose header starts with ``group`` must be
such a table, so a group table cannot escape the check by a changed header.

Checked both ways: an option missing from a row, and a listed option without its yaml file, fail with the page,
line, group, file and option named. Every group of ``conf/`` must be listed in some group table (the generated
reference's lists them all), or in :data:`UNLISTED`, with the reason.

The extension table of docs/contributing.md (header ``kind | ...``) must name files that exist: every path in it
(``src/...``, ``conf/...``, ``tests/...``, ``tests/x.py::name``) without a ``<placeholder>`` exists (with the named
test or constant), a placeholder path lies in a folder that exists, every ``scorelab.`` name in it imports, and
the group named in its "table line" column is a row of the group table of docs/configuration.md (of the generated
reference when that page has none).
"""
from __future__ import annotations

import importlib
import importlib.util
import re
import sys
from pathlib import Path
from typing import NamedTuple

import pytest

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
PAGES = ["README.md", *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs").glob("*.md"))]
CONTRIBUTING = "docs/contributing.md"
CONFIGURATION = "docs/configuration.md"  # the page whose group table the extension table's "table line" names
GENERATED = "docs/reference/config.md (generated from conf/)"

# Groups of conf/ that no group table lists, each with the reason. Empty: the generated reference lists every group,
# Hydra's own (`hydra`, `hydra/launcher`) and `paths` included.
UNLISTED: dict[str, str] = {}


def generated_reference() -> str:
    """The configuration reference of the site, rendered from the real conf/ by docs/gen_config_reference.py."""
    name = "scorelab_docs_gen_config_reference"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, ROOT / "docs" / "gen_config_reference.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name].render(CONF)


# --------------------------------------------------------------------------------------------- the checker
class GroupRow(NamedTuple):
    """One row of a group table: where it is, the group it names and the options it lists."""

    page: str
    line: int
    group: str
    options: tuple[str, ...]


def conf_groups(conf: Path = CONF) -> dict[str, set[str]]:
    """``{group: option names}`` of every folder under ``conf/`` holding yaml files of its own (``data``,
    ``callbacks/fid``, ``hydra/launcher``); the entry configs at the top (``train.yaml``) are no group's."""
    groups: dict[str, set[str]] = {}
    for path in sorted(conf.rglob("*.yaml")):
        folder = path.parent.relative_to(conf)
        if folder.parts:
            groups.setdefault(folder.as_posix(), set()).add(path.stem)
    return groups


def _cells(line: str) -> list[str]:
    """The cells of a Markdown table line (``\\|`` is a literal bar)."""
    body = line.strip().removeprefix("|").removesuffix("|")
    return [cell.strip().replace("\\|", "|") for cell in re.split(r"(?<!\\)\|", body)]


def tables(text: str) -> list[list[tuple[int, list[str]]]]:
    """The Markdown tables of ``text``: for each, ``(line number, cells)`` of its header and body rows (the
    ``---`` separator left out). Lines inside fenced code blocks are not tables."""
    found: list[list[tuple[int, list[str]]]] = []
    current: list[tuple[int, list[str]]] = []
    fenced = False
    for number, line in enumerate(text.splitlines(), 1):
        if line.lstrip().startswith("```"):
            fenced = not fenced
        if not fenced and line.lstrip().startswith("|"):
            cells = _cells(line)
            if len(current) == 1 and all(re.fullmatch(r":?-+:?", c) for c in cells):
                continue  # the separator under the header
            current.append((number, cells))
            continue
        if current:
            found.append(current)
            current = []
    if current:
        found.append(current)
    return found


def group_rows(text: str, page: str) -> list[GroupRow]:
    """The rows of every group table of a page (see the module docstring for the format).

    Raises:
        ValueError: a table headed ``group`` whose second column is not ``options``, or a row whose first cell is
            not one group name in backticks: the checker would otherwise pass over it.
    """
    rows = []
    for table in tables(text):
        (header_line, header), body = table[0], table[1:]
        if not header or header[0].lower() != "group":
            continue
        if len(header) < 2 or header[1].lower() != "options":
            raise ValueError(f"{page}:{header_line}: a table headed 'group' must have 'options' as its second "
                             f"column (got {header[1:2]})")
        for number, cells in body:
            match = re.fullmatch(r"`([\w./-]+)`", cells[0])
            if match is None or len(cells) < 2:
                raise ValueError(f"{page}:{number}: a group table row must start with `<group>` | `<option>`, ...; "
                                 f"got {' | '.join(cells[:2])!r}")
            rows.append(GroupRow(page, number, match.group(1), tuple(re.findall(r"`([^`]+)`", cells[1]))))
    return rows


def check_rows(rows: list[GroupRow], groups: dict[str, set[str]]) -> list[str]:
    """What is wrong with ``rows`` against the groups of conf/, one line per problem (empty: nothing)."""
    problems = []
    for row in rows:
        where = f"{row.page}:{row.line}: group `{row.group}`"
        if row.group not in groups:
            problems.append(f"{where} is listed, but conf/{row.group}/ holds no yaml file")
            continue
        listed = set(row.options)
        for option in sorted({o for o in row.options if row.options.count(o) > 1}):
            problems.append(f"{where} lists option `{option}` twice")
        for option in sorted(groups[row.group] - listed):
            problems.append(f"{where} lacks option `{option}` (conf/{row.group}/{option}.yaml exists)")
        for option in sorted(listed - groups[row.group]):
            problems.append(f"{where} lists option `{option}`, but conf/{row.group}/{option}.yaml does not exist")
    return problems


def unlisted_groups(rows: list[GroupRow], groups: dict[str, set[str]], unlisted: dict[str, str]) -> list[str]:
    """The groups of conf/ that no row lists and :data:`UNLISTED` does not excuse, as messages."""
    listed = {row.group for row in rows}
    return [f"conf/{group}/ ({', '.join(sorted(options))}) is in no group table of README.md, docs/*.md or the "
            f"generated reference (docs/gen_config_reference.py lists every folder of conf/: has it changed?)"
            for group, options in sorted(groups.items()) if group not in listed and group not in unlisted]


def all_group_rows() -> list[GroupRow]:
    """The rows of every group table: README.md's, docs/*.md's and the generated reference's."""
    rows = [row for page in PAGES for row in group_rows((ROOT / page).read_text(), page)]
    return rows + group_rows(generated_reference(), GENERATED)


# ------------------------------------------------------------------------------------------ the docs today
def test_the_generated_reference_has_a_row_for_every_group():
    generated = [row for row in all_group_rows() if row.page == GENERATED]
    assert sorted(row.group for row in generated) == sorted(conf_groups())
    assert not check_rows(generated, conf_groups())


def test_every_group_table_lists_exactly_the_options_of_its_group():
    problems = check_rows(all_group_rows(), conf_groups())
    assert not problems, "stale config tables:\n" + "\n".join(problems)


def test_every_group_of_conf_is_in_a_table():
    rows, groups = all_group_rows(), conf_groups()
    assert not unlisted_groups(rows, groups, UNLISTED), "\n".join(unlisted_groups(rows, groups, UNLISTED))
    for group, reason in UNLISTED.items():  # the excuses stay true: a real group, not also listed, with a reason
        assert group in groups and reason, f"UNLISTED names {group!r}, which is no group of conf/ (or no reason)"
        assert group not in {row.group for row in rows}, f"UNLISTED names {group!r}, which a table lists"


# ------------------------------------------------------------------------------ the checker is not hollow
STALE = """\
Intro text; a table of something else may have a `loss` cell:

| key | default | meaning |
| --- | --- | --- |
| `loss` | `dsm` | not a group table |

| group | options | what it configures |
| --- | --- | --- |
| `sde` | `vp`, `vp_cosine`, `subvp`, `ve` | complete |
| `loss` | `dsm`, `dsm_likelihood`, `ism`, `ssm`, `ddpm` | the README row before `hybrid` was added |
| `optimizer` | `adam`, `adamw`, `lion` | one option too many |

```
| group | options |
| `not_a_group` | `inside a code block` |
```
"""


def test_the_checker_catches_a_missing_and_an_extra_option():
    groups = {"sde": {"vp", "vp_cosine", "subvp", "ve"}, "loss": {"dsm", "dsm_likelihood", "ism", "ssm", "ddpm",
                                                                 "hybrid"}, "optimizer": {"adam", "adamw"}}
    rows = group_rows(STALE, "STALE.md")
    assert [(r.group, r.line) for r in rows] == [("sde", 9), ("loss", 10), ("optimizer", 11)]
    problems = check_rows(rows, groups)
    assert problems == [
        "STALE.md:10: group `loss` lacks option `hybrid` (conf/loss/hybrid.yaml exists)",
        "STALE.md:11: group `optimizer` lists option `lion`, but conf/optimizer/lion.yaml does not exist",
    ]
    # the real conf/ tree: the stale loss row of the README fails on it too
    assert any("`loss` lacks option `hybrid`" in p for p in check_rows(rows, conf_groups()))


def test_the_checker_catches_an_unknown_group_and_an_unlisted_one(tmp_path):
    for path in ("sde/vp.yaml", "sde/ve.yaml", "callbacks/default.yaml", "callbacks/fid/default.yaml", "train.yaml"):
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text("_target_: x\n")
    groups = conf_groups(tmp_path)
    assert groups == {"sde": {"vp", "ve"}, "callbacks": {"default"}, "callbacks/fid": {"default"}}
    rows = group_rows("| group | options |\n| --- | --- |\n| `sde` | `ve`, `vp` |\n| `sampler` | `pc` |\n", "X.md")
    assert check_rows(rows, groups) == ["X.md:4: group `sampler` is listed, but conf/sampler/ holds no yaml file"]
    missing = unlisted_groups(rows, groups, {})
    assert len(missing) == 2 and missing[0].startswith("conf/callbacks/ (default)")
    assert missing[1].startswith("conf/callbacks/fid/ (default)")
    assert unlisted_groups(rows, groups, {"callbacks": "r", "callbacks/fid": "r"}) == []


@pytest.mark.parametrize("text, match", [
    ("| group | choices |\n| --- | --- |\n| `sde` | `vp` |\n", "second column"),
    ("| group | options |\n| --- | --- |\n| sde | `vp` |\n", "must start with"),
])
def test_a_group_table_in_another_format_is_refused(text, match):
    with pytest.raises(ValueError, match=match):
        group_rows(text, "X.md")


# ------------------------------------------------------------------- the contributor guide's extension table
PATH = re.compile(r"^(src|conf|tests|bench|docs)/[^\s`]*$")


def extension_table() -> list[tuple[int, dict[str, str]]]:
    """The rows of docs/contributing.md's table headed ``kind``, as ``(line, {column: cell})``."""
    for table in tables((ROOT / CONTRIBUTING).read_text()):
        (_, header), body = table[0], table[1:]
        if header and header[0].lower() == "kind":
            return [(number, dict(zip(header, cells, strict=False))) for number, cells in body]
    raise AssertionError(f"{CONTRIBUTING} has no table headed 'kind | ...'")


def _check_path(token: str) -> str | None:
    """Why ``token`` (a path, maybe ``path::name``, maybe with a ``<placeholder>``) points nowhere, or None."""
    path, _, name = token.partition("::")
    if "<" in path:  # a new file: its folder must exist
        folder = ROOT / path.split("<", 1)[0]
        folder = folder if path.split("<", 1)[0].endswith("/") else folder.parent
        return None if folder.is_dir() else f"the folder of {token} ({folder.relative_to(ROOT)}) does not exist"
    if not (ROOT / path).exists():
        return f"{path} does not exist"
    if name and not re.search(rf"^(def |class |async def )?{re.escape(name)}\b", (ROOT / path).read_text(), re.M):
        return f"{path} defines no {name}"
    return None


def _check_name(token: str) -> str | None:
    """Why a dotted ``scorelab.`` name does not import, or None."""
    parts = token.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for attr in parts[cut:]:
            if not hasattr(obj, attr):
                return f"{token} does not import ({'.'.join(parts[:cut])} has no {attr})"
            obj = getattr(obj, attr)
        return None
    return f"{token} does not import"


def test_the_extension_table_names_files_that_exist():
    rows = extension_table()
    assert len(rows) >= 5, f"{CONTRIBUTING}: the extension table has {len(rows)} rows"
    problems, checked = [], 0
    for number, row in rows:
        for cell in row.values():
            for token in re.findall(r"`([^`]+)`", cell):
                token = token.strip()
                if PATH.match(token):
                    why = _check_path(token)
                elif token.startswith("scorelab.") and "<" not in token and re.fullmatch(r"[\w.]+", token):
                    why = _check_name(token)
                else:
                    continue
                checked += 1
                if why:
                    problems.append(f"{CONTRIBUTING}:{number}: {why}")
    assert checked >= 20, f"only {checked} paths and names checked: has the table's format changed?"
    assert not problems, "\n".join(problems)


def test_the_extension_table_names_rows_of_the_configuration_group_table():
    rows = all_group_rows()
    table_groups = ({row.group for row in rows if row.page == CONFIGURATION}
                    or {row.group for row in rows if row.page == GENERATED})
    for number, row in extension_table():
        line_cell = next(v for k, v in row.items() if "table" in k.lower())
        yaml_cell = next(v for k, v in row.items() if "yaml" in k.lower())
        named = [g for g in re.findall(r"`([^`]+)`", line_cell) if g in conf_groups()]
        assert named, f"{CONTRIBUTING}:{number}: the table-line cell names no conf group: {line_cell!r}"
        for group in named:
            assert group in table_groups, (f"{CONTRIBUTING}:{number}: `{group}` is no row of the group table of "
                                           f"{CONFIGURATION}")
            assert f"conf/{group}/" in yaml_cell, f"{CONTRIBUTING}:{number}: the yaml is not in conf/{group}/"


def test_the_extension_checks_catch_moved_files_and_names():
    assert _check_path("src/scorelab/sde/vp.py") is None and _check_path("conf/sde/<name>.yaml") is None
    assert _check_path("tests/test_sde.py::test_a_new_vp_schedule_is_only_its_beta") is None
    assert _check_path("tests/test_platform.py::TOY_MODELS") is None
    assert _check_path("src/scorelab/sde/moved.py") == "src/scorelab/sde/moved.py does not exist"
    assert _check_path("tests/test_sde.py::test_gone") == "tests/test_sde.py defines no test_gone"
    assert "does not exist" in _check_path("conf/no_such_group/<name>.yaml")
    assert _check_name("scorelab.sde.VPFamily") is None
    assert _check_name("scorelab.sde.NoSuchSDE") == ("scorelab.sde.NoSuchSDE does not import "
                                                    "(scorelab.sde has no NoSuchSDE)")
