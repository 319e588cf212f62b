"""The configuration reference of the documentation site, generated from ``conf/`` at every build.

:func:`render` reads every yaml file of ``conf/`` line by line (PyYAML and OmegaConf drop comments) and writes one
Markdown page: the entry configs (``conf/train.yaml``, ``sample.yaml``, ...), then every group (a folder of
``conf/``, nested ones such as ``callbacks/fid`` and ``hydra/launcher`` included) with every option (a yaml file),
its leading comment, its defaults list and every key with its value and the comment beside or above it. Nothing in
it is written by hand, so it cannot go stale: ``docs/hooks.py`` adds it to the site as ``reference/config.md``,
and ``tests/test_docs_site.py`` checks that every group, option and key of ``conf/`` is in it.

``python docs/gen_config_reference.py [conf] > config.md`` prints the page.
"""
from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
PAGE = "reference/config.md"  # where the page lies in the site

# A mapping key (plain or quoted) at the start of a line, or of a list item (`- key: value`).
_KEY = re.compile(r"""(?P<key>"[^"]*"|'[^']*'|[^\s#'"\[\]{},:][^#:]*?)\s*:(?=\s|$)\s*(?P<rest>.*)$""")
_BLOCK_SCALAR = re.compile(r"[|>][-+]?\d*")


@dataclass
class Entry:
    """One key of a config file: its dotted path, its value as written (``""``: a mapping or list follows), the
    comment beside or above it, and the lines of a block scalar (``|``, ``>``)."""

    path: str
    value: str
    comment: str = ""
    block: list[str] = field(default_factory=list)


@dataclass
class Option:
    """One yaml file of ``conf/``: its group (``""`` for an entry config), name, leading comment, ``@package``
    directive, defaults list (each item an :class:`Entry` whose value is the item) and keys."""

    group: str
    name: str
    comment_lines: list[str] = field(default_factory=list)
    package: str | None = None
    defaults: list[Entry] = field(default_factory=list)
    entries: list[Entry] = field(default_factory=list)

    @property
    def comment(self) -> str:
        """The leading comment as one line."""
        return " ".join(line.strip() for line in self.comment_lines)

    @property
    def prefix(self) -> str:
        """Where the option's keys land in the composed config (``sde.``, ``callbacks.fid.``, ``""``)."""
        dotted = self.group.replace("/", ".")
        package = (self.package if self.package is not None else dotted).replace("_group_", dotted)
        if package.startswith("_global_"):
            package = package.removeprefix("_global_").lstrip(".")
        return f"{package}." if package else ""


def _split_comment(text: str) -> tuple[str, str]:
    """``(value, comment)`` of the rest of a line: a ``#`` after a space and outside quotes starts the comment."""
    quote = None
    for i, char in enumerate(text):
        if quote:
            if char == quote:
                quote = None
        elif char in "'\"" and (i == 0 or text[i - 1] in " [{,:"):
            quote = char
        elif char == "#" and (i == 0 or text[i - 1] in " \t"):
            return text[:i].rstrip(), text[i + 1:].strip()
    return text.rstrip(), ""


def _unquote(key: str) -> str:
    return key[1:-1] if len(key) >= 2 and key[0] == key[-1] and key[0] in "'\"" else key


def parse(text: str, group: str = "", name: str = "") -> Option:
    """The comments, defaults list and keys of one yaml file, read line by line.

    The leading comment is the first block of ``#`` lines (a ``# @package`` line is the package directive); any
    other comment line belongs to the next key or list item; a comment after a value is that key's, and so are the
    comment lines below it whose ``#`` stands in the same column (a comment continued). Keys are
    dotted paths (``net.ch``); list items under a key are ``key[0]``, ``key[1]``...; items of the top-level
    ``defaults`` list go to :attr:`Option.defaults`.
    """
    option = Option(group, name)
    lines = text.splitlines()
    i = 0
    while i < len(lines) and (lines[i].lstrip().startswith("#") or not lines[i].strip()):
        stripped = lines[i].strip()
        if stripped.startswith("# @package"):
            option.package = stripped.removeprefix("# @package").strip()
        elif stripped.startswith("#"):
            option.comment_lines.append(stripped[1:].removeprefix(" ").rstrip())
        elif option.comment_lines:  # a blank line ends the leading comment
            i += 1
            break
        i += 1

    stack: list[tuple[int, str]] = []  # (indent, dotted path) of the open mappings and lists
    counters: dict[str, int] = {}      # list path -> items so far
    pending: list[str] = []            # comment lines waiting for their key
    block: Entry | None = None         # the entry whose block scalar is being read
    block_indent = -1
    last: Entry | None = None          # the entry of the previous line, when a comment ended it
    last_column = -1                   # the column of that comment's `#`
    for line in lines[i:]:
        indent = len(line) - len(line.lstrip())
        stripped = line.strip()
        if block is not None:
            if not stripped or indent > block_indent:
                block.block.append(line)
                continue
            _dedent(block)
            block = None
        if not stripped:
            continue
        if stripped.startswith("#"):
            if last is not None and indent == last_column:  # the comment of the line above, continued
                last.comment += " " + stripped[1:].strip()
            else:
                pending.append(stripped[1:].strip())
                last = None
            continue
        value_part, beside = _split_comment(line)
        last_column = len(value_part) + line[len(value_part):].index("#") if beside else -1
        while stack and stack[-1][0] >= indent and not (stripped.startswith("- ") and stack[-1][0] == indent
                                                         and stack[-1][1] in counters):
            stack.pop()
        parent = stack[-1][1] if stack else ""
        comment_above = " ".join(pending)
        pending = []
        if stripped == "-" or stripped.startswith("- "):  # a list item of `parent`
            item, comment = _split_comment(stripped[1:].strip())
            comment = " ".join(c for c in (comment_above, comment) if c)
            if parent == "defaults":
                option.defaults.append(Entry("defaults", item, comment))
                last = option.defaults[-1] if beside else None
                continue
            number = counters.get(parent, 0)
            counters[parent] = number + 1
            match = _KEY.match(item)
            if match:  # `- key: value`: a mapping inside the list
                path = f"{parent}[{number}]"
                value, _ = _split_comment(match["rest"])
                option.entries.append(Entry(f"{path}.{_unquote(match['key'].strip())}", value, comment))
                stack.append((indent + 2, path))
            else:
                option.entries.append(Entry(f"{parent}[{number}]", item, comment))
            last = option.entries[-1] if beside else None
            continue
        match = _KEY.match(stripped)
        if match is None:  # the continuation of a flow value over lines: part of the last key's value
            if option.entries:
                value, comment = _split_comment(stripped)
                option.entries[-1].value += " " + value
                option.entries[-1].comment = " ".join(c for c in (option.entries[-1].comment, comment) if c)
                last = option.entries[-1] if beside else None
            continue
        key = _unquote(match["key"].strip())
        path = f"{parent}.{key}" if parent else key
        value, comment = _split_comment(match["rest"])
        comment = " ".join(c for c in (comment_above, comment) if c)
        if path == "defaults":
            stack.append((indent, path))
            counters[path] = 0
            continue
        entry = Entry(path, value, comment)
        option.entries.append(entry)
        last = entry if beside else None
        if _BLOCK_SCALAR.fullmatch(value):
            block, block_indent = entry, indent
        elif not value:
            stack.append((indent, path))
            counters[path] = 0
    if block is not None:
        _dedent(block)
    return option


def _dedent(entry: Entry) -> None:
    """The lines of a block scalar without their trailing blank lines and common indentation."""
    while entry.block and not entry.block[-1].strip():
        entry.block.pop()
    width = min((len(b) - len(b.lstrip()) for b in entry.block if b.strip()), default=0)
    entry.block = [b[width:] for b in entry.block]


def read_conf(conf: Path = CONF) -> tuple[list[Option], dict[str, list[Option]]]:
    """The entry configs (the yaml files at the top of ``conf/``) and ``{group: options}`` of every folder."""
    entries: list[Option] = []
    groups: dict[str, list[Option]] = {}
    for path in sorted(conf.rglob("*.yaml")):
        folder = path.parent.relative_to(conf).as_posix()
        group = "" if folder == "." else folder
        option = parse(path.read_text(), group, path.stem)
        if group:
            groups.setdefault(group, []).append(option)
        else:
            entries.append(option)
    return entries, dict(sorted(groups.items()))


# ------------------------------------------------------------------------------------------------ Markdown
def _text(comment: str) -> str:
    """A comment as Markdown text in a table cell: its `code spans` kept, the rest escaped (``<run>``, ``*``,
    ``_``, ``|`` are literal)."""
    parts = re.split(r"(`[^`]*`)", comment)
    out = []
    for n, part in enumerate(parts):
        if n % 2:
            out.append(part.replace("|", "\\|"))
        else:
            part = part.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
            out.append(re.sub(r"([\\*_\[\]|`])", r"\\\1", part))
    return "".join(out)


def _comment_block(lines: list[str]) -> list[str]:
    """A leading comment as Markdown: prose lines as paragraphs, command lines (indented, or starting with
    ``python``) as a code block."""
    out: list[str] = []
    code: list[str] = []
    for line in [*lines, None]:
        if line is not None and (line.startswith("  ") or line.lstrip().startswith(("python ", "make "))):
            code.append(line)
            continue
        if code:
            width = min(len(c) - len(c.lstrip()) for c in code)
            out += ["", "```text", *(c[width:] for c in code), "```", ""]
            code = []
        if line is not None and line.strip():
            out.append(_text(line.strip()))
    return [*out, ""] if out else []


def _code(value: str) -> str:
    """A value as a code span (a backtick inside it widens the fence); a bar is escaped for the table."""
    if not value:
        return ""
    fence = "``" if "`" in value else "`"
    pad = " " if value.startswith("`") or value.endswith("`") else ""
    return f"{fence}{pad}{value}{pad}{fence}".replace("|", "\\|")


def _anchor(group: str, name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", f"{group}-{name}".lower()).strip("-")


def _option_section(option: Option, level: str) -> list[str]:
    title = f"{option.group}/{option.name}" if option.group else f"{option.name}.yaml"
    source = f"conf/{option.group}/{option.name}.yaml" if option.group else f"conf/{option.name}.yaml"
    out = [f"{level} `{title}` {{ #{_anchor(option.group or 'entry', option.name)} }}", ""]
    out += _comment_block(option.comment_lines)
    facts = [f"File `{source}`."]
    if option.group:
        facts.append(f"Select it with `{option.group}={option.name}`.")
    if option.package is not None:
        facts.append(f"Package `{option.package}`" + (": its keys are set at the top of the config."
                                                      if option.package == "_global_" else "."))
    out += [" ".join(facts), ""]
    if option.defaults:
        out.append("Defaults list:")
        out.append("")
        out += [f"- {_code(d.value)}" + (f": {_text(d.comment)}" if d.comment else "") for d in option.defaults]
        out.append("")
    if option.entries:
        out += ["| key | value | comment |", "| --- | --- | --- |"]
        for entry in option.entries:
            value = "(the text below)" if entry.block else _code(entry.value)
            out.append(f"| {_code(option.prefix + entry.path)} | {value} | {_text(entry.comment)} |")
        out.append("")
        for entry in option.entries:
            if entry.block:
                out += [f"{_code(option.prefix + entry.path)}:", "", "```text", *entry.block, "```", ""]
    elif not option.defaults:
        out += ["(No keys.)", ""]
    return out


def _entry_defaults(entries: list[Option]) -> dict[str, dict[str, str]]:
    """``{group: {entry config: default option}}`` from the entry configs' defaults lists."""
    found: dict[str, dict[str, str]] = {}
    for option in entries:
        for item in (d.value for d in option.defaults):
            match = re.fullmatch(r"(?:override\s+)?/?([\w/]+)(?:@[\w.]+)?\s*:\s*(\S+)", item)
            if match:
                found.setdefault(match[1], {})[option.name] = match[2]
    return found


def render(conf: Path = CONF) -> str:
    """The configuration reference page of ``conf``, as Markdown."""
    entries, groups = read_conf(conf)
    defaults = _entry_defaults(entries)
    out = [
        "# Configuration reference",
        "",
        "Generated from `conf/` at every build of this site by `docs/gen_config_reference.py`: every group, "
        "every option and every key, with its value and the comment beside it in the yaml file. "
        "[Configuration](../configuration.md) explains how groups, options and overrides work.",
        "",
        "On the command line, `group=option` picks an option (`sde=ve`, `callbacks/fid=default`) and "
        "`key=value` changes a key, under the name the **key** column gives (`sde.beta_max=10`); "
        "`python train.py --cfg job` prints the composed config.",
        "",
        "## Groups",
        "",
        "| group | options | default |",
        "| --- | --- | --- |",
    ]
    for group, options in groups.items():
        names = ", ".join(f"[`{o.name}`](#{_anchor(group, o.name)})" for o in options)
        by_value: dict[str, list[str]] = {}
        for entry, value in defaults.get(group, {}).items():
            by_value.setdefault(value, []).append(f"{entry}.yaml")
        default = "; ".join(f"`{value}` ({', '.join(names)})" for value, names in by_value.items())
        out.append(f"| `{group}` | {names} | {default} |")
    out += ["", "## Entry configs", "",
            "The configs the commands start from (`python train.py` reads `conf/train.yaml`).", ""]
    for option in entries:
        out += _option_section(option, "###")
    for group, options in groups.items():
        out += [f"## Group `{group}` {{ #group-{_anchor(group, '')} }}", "",
                f"{len(options)} option{'s' if len(options) > 1 else ''}, in `conf/{group}/`.", ""]
        for option in options:
            out += _option_section(option, "###")
    return "\n".join(out).rstrip() + "\n"


if __name__ == "__main__":
    sys.stdout.write(render(Path(sys.argv[1]) if len(sys.argv) > 1 else CONF))
