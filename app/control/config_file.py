"""Reading herd.yaml: YAML to a validated HerdConfig, every error with its line number.

Read safely, whatever the file holds: YAML 1.2's core schema (true/false are the only
booleans, so `admin: yes` is the string "yes" and refused; `010` is ten; a date stays text),
nesting and the values aliases expand to bounded (an alias bomb fails at once, not after
minutes), text PostgreSQL cannot store refused where it is, bytes that are not UTF-8 named
by their offset. Merge keys (`<<: *base`) are honoured; what they bring keeps the line it
is written on.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import yaml
from pydantic import ValidationError

from app.control.specs import HerdConfig
from app.openai_api.text import check_text

Path_ = tuple[str | int, ...]

# Deeper than any herd.yaml needs, far below Python's recursion limit.
MAX_DEPTH = 64
# Values after aliases are expanded: thousands of deployments fit, a billion laughs not.
MAX_VALUES = 100_000
MAX_BYTES = 8 * 1024 * 1024

_CORE = "tag:yaml.org,2002:"
MERGE_TAG = _CORE + "merge"


class ConfigError(ValueError):
    """herd.yaml is not usable; the message names the file and line."""


class _CoreLoader(yaml.SafeLoader):
    """PyYAML's safe loader with YAML 1.2's core schema in place of YAML 1.1's resolvers."""

    yaml_implicit_resolvers = {}  # noqa: RUF012
    yaml_constructors = dict(yaml.SafeLoader.yaml_constructors)  # noqa: RUF012


_INT = re.compile(r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$")
_FLOAT = re.compile(
    r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?"
    r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"
)
for _tag, _pattern, _first in (
    ("bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")),
    ("null", re.compile(r"^(?:~|null|Null|NULL|)$"), ["~", "n", "N", ""]),
    ("int", _INT, list("-+0123456789")),
    ("float", _FLOAT, list("-+.0123456789")),
    ("merge", re.compile(r"^<<$"), ["<"]),
):
    _CoreLoader.add_implicit_resolver(_CORE + _tag, _pattern, _first)


def _construct_bool(loader: yaml.SafeLoader, node: yaml.Node) -> bool:
    return str(node.value).lower() == "true"


def _construct_int(loader: yaml.SafeLoader, node: yaml.Node) -> int:
    text = str(node.value)
    if text.startswith("0o"):
        return int(text[2:], 8)
    if text.startswith("0x"):
        return int(text[2:], 16)
    return int(text, 10)


def _construct_float(loader: yaml.SafeLoader, node: yaml.Node) -> float:
    text = str(node.value).lower()
    if text.endswith(".inf"):
        return float("-inf") if text.startswith("-") else float("inf")
    return float(text)  # ".nan" included


_CoreLoader.add_constructor(_CORE + "bool", _construct_bool)
_CoreLoader.add_constructor(_CORE + "int", _construct_int)
_CoreLoader.add_constructor(_CORE + "float", _construct_float)


@dataclass(frozen=True)
class LoadedConfig:
    """A validated herd.yaml and the line (1-based) of each thing in it."""

    config: HerdConfig
    lines: dict[Path_, int]
    filename: str

    def line(self, path: Path_) -> int:
        """The line of path, or of the nearest enclosing thing that has one."""
        while path:
            if path in self.lines:
                return self.lines[path]
            path = path[:-1]
        return self.lines.get((), 1)

    def where(self, path: Path_) -> str:
        return f"{self.filename}:{self.line(path)}"


class _Refused(Exception):
    """A problem at a line of the file (the file name is added by parse_config)."""

    def __init__(self, line: int, message: str) -> None:
        super().__init__(message)
        self.line = line
        self.message = message


def _line(node: yaml.Node) -> int:
    return int(node.start_mark.line) + 1


def _dotted(path: Path_) -> str:
    return ".".join(str(p) for p in path) or "(top)"


class _Reader:
    """Turns a composed YAML graph into plain values, recording each one's line, within
    the depth and value bounds (aliases share nodes; each use counts)."""

    def __init__(self, loader: _CoreLoader) -> None:
        self.loader = loader
        self.lines: dict[Path_, int] = {}
        self.values = 0

    def plain(self, node: yaml.Node, path: Path_, depth: int = 0) -> Any:
        self.values += 1
        if self.values > MAX_VALUES:
            raise _Refused(
                _line(node),
                f"the file expands to more than {MAX_VALUES} values (aliases repeating "
                "aliases?); write it out plainly",
            )
        if depth > MAX_DEPTH:
            raise _Refused(_line(node), f"nested deeper than {MAX_DEPTH} levels")
        self.lines[path] = _line(node)
        if isinstance(node, yaml.MappingNode):
            return self._mapping(node, path, depth)
        if isinstance(node, yaml.SequenceNode):
            if node.tag != _CORE + "seq":
                raise _Refused(_line(node), f"the tag {node.tag} is not supported here")
            return [self.plain(item, (*path, i), depth + 1) for i, item in enumerate(node.value)]
        value = self.loader.construct_object(node, deep=True)
        if isinstance(value, str):
            self._check_text(value, node, path)
        return value

    def _mapping(self, node: yaml.MappingNode, path: Path_, depth: int) -> dict[Any, Any]:
        if node.tag != _CORE + "map":
            raise _Refused(_line(node), f"the tag {node.tag} is not supported here")
        out: dict[Any, Any] = {}
        # What `<<` merges in comes first; the mapping's own keys override it (and their
        # lines override the merged ones).
        for source in reversed(self._merge_sources(node)):
            out.update(self.plain(source, path, depth))
        seen: set[Any] = set()
        for key_node, value_node in node.value:
            if key_node.tag == MERGE_TAG:
                continue
            if not isinstance(key_node, yaml.ScalarNode):
                raise _Refused(_line(key_node), "a key must be a plain value, not a list or map")
            key = self.loader.construct_object(key_node, deep=True)
            if isinstance(key, str):
                self._check_text(key, key_node, path)
            try:
                hash(key)
            except TypeError:
                raise _Refused(_line(key_node), f"the key {key!r} cannot be a key") from None
            if key in seen:
                raise _Refused(_line(key_node), f"{key!r} appears twice")
            seen.add(key)
            out[key] = self.plain(value_node, (*path, key), depth + 1)
            # A key's own line, where its value starts on the next one (nested blocks).
            self.lines[(*path, key)] = _line(key_node)
        self.lines[path] = _line(node)
        return out

    @staticmethod
    def _merge_sources(node: yaml.MappingNode) -> list[yaml.MappingNode]:
        """The mappings `<<` merges into node, those that win first."""
        sources: list[yaml.MappingNode] = []
        for key_node, value_node in node.value:
            if key_node.tag != MERGE_TAG:
                continue
            items = value_node.value if isinstance(value_node, yaml.SequenceNode) else [value_node]
            for item in items:
                if not isinstance(item, yaml.MappingNode):
                    raise _Refused(
                        _line(item),
                        "<< merges a mapping (an alias of one, *name) or a list of them, "
                        f"not a {_kind(item)}",
                    )
                sources.append(item)
        return sources

    @staticmethod
    def _check_text(value: str, node: yaml.Node, path: Path_) -> None:
        try:
            check_text(value)
        except ValueError as exc:
            raise _Refused(_line(node), f"{_dotted(path)}: {exc}") from None


def _kind(node: yaml.Node) -> str:
    if isinstance(node, yaml.SequenceNode):
        return "list"
    if isinstance(node, yaml.ScalarNode):
        return f"plain value ({node.value!r})"[:80]
    return "mapping"


def _check_nesting(text: str) -> None:
    """Refuse nesting past MAX_DEPTH before composing (PyYAML composes recursively, and
    3,000 nested lists would end in a RecursionError); the parser itself is iterative."""
    depth = 0
    for event in yaml.parse(text, Loader=_CoreLoader):
        if isinstance(event, yaml.CollectionStartEvent):
            depth += 1
            if depth > MAX_DEPTH:
                line = int(event.start_mark.line) + 1 if event.start_mark else 1
                raise _Refused(line, f"nested deeper than {MAX_DEPTH} levels")
        elif isinstance(event, yaml.CollectionEndEvent):
            depth -= 1


def _decode(data: bytes, filename: str) -> str:
    if len(data) > MAX_BYTES:
        raise ConfigError(f"{filename}: {len(data)} bytes; herd.yaml may hold {MAX_BYTES}")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise ConfigError(
            f"{filename}:{line}: not UTF-8 text: byte {exc.start} (0x{data[exc.start]:02x}) "
            f"{exc.reason}"
        ) from None


def _yaml_problem(exc: yaml.YAMLError, text: str) -> _Refused:
    if isinstance(exc, yaml.reader.ReaderError):
        line = text.count("\n", 0, exc.position) + 1
        char = chr(exc.character) if isinstance(exc.character, int) else exc.character
        return _Refused(
            line,
            f"not valid YAML: the character {char!r} (offset {exc.position}) is not allowed "
            "in YAML text",
        )
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    line = int(mark.line) + 1 if mark is not None else 1
    problem = getattr(exc, "problem", None) or str(exc)
    return _Refused(line, f"not valid YAML: {problem}")


def parse_config(source: str | bytes, filename: str = "herd.yaml") -> LoadedConfig:
    """Validate herd.yaml (its bytes, or text): unknown keys, wrong types, out-of-range
    values and text the database cannot store are refused with the file's line; nothing
    here touches the database."""
    text = _decode(source, filename) if isinstance(source, bytes) else source
    try:
        _check_nesting(text)
        loader = _CoreLoader(text)
        try:
            node = loader.get_single_node()
            reader = _Reader(loader)
            data = {} if node is None else reader.plain(node, ())
        finally:
            loader.dispose()
    except yaml.YAMLError as exc:
        refused = _yaml_problem(exc, text)
        raise ConfigError(f"{filename}:{refused.line}: {refused.message}") from None
    except _Refused as exc:
        raise ConfigError(f"{filename}:{exc.line}: {exc.message}") from None
    except RecursionError:
        raise ConfigError(f"{filename}: nested too deeply to read") from None
    lines = reader.lines
    if not isinstance(data, dict):
        line = lines.get((), 1)
        raise ConfigError(f"{filename}:{line}: expected a mapping with deployments, aliases, keys")
    try:
        config = HerdConfig.model_validate(data)
    except ValidationError as exc:
        loaded = LoadedConfig(HerdConfig(), lines, filename)
        problems = []
        for error in exc.errors():
            loc = tuple(error["loc"])
            where = ".".join(str(p) for p in loc) or "(top)"
            message = "unknown key" if error["type"] == "extra_forbidden" else error["msg"]
            problems.append(f"{loaded.where(loc)}: {where}: {message}")
        raise ConfigError("\n".join(problems)) from None
    return LoadedConfig(config, lines, filename)
