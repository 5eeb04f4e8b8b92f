"""Reading herd.yaml: YAML to a validated HerdConfig, every error with its line number."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import yaml
from pydantic import ValidationError

from app.admin.specs import HerdConfig

Path_ = tuple[str | int, ...]


class ConfigError(ValueError):
    """herd.yaml is not usable; the message names the file and line."""


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
        return 1

    def where(self, path: Path_) -> str:
        return f"{self.filename}:{self.line(path)}"


def _plain(node: yaml.Node, path: Path_, lines: dict[Path_, int]) -> Any:
    """The Python value of a composed node; records each node's line under its path."""
    lines[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        out: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            key = yaml.safe_load(yaml.serialize(key_node))
            if key in out:
                raise ConfigError(f"line {key_node.start_mark.line + 1}: {key!r} appears twice")
            out[key] = _plain(value_node, (*path, key), lines)
            # A key's own line, where its value starts on the next one (nested blocks).
            lines[(*path, key)] = key_node.start_mark.line + 1
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_plain(item, (*path, i), lines) for i, item in enumerate(node.value)]
    return yaml.safe_load(yaml.serialize(node))


def parse_config(text: str, filename: str = "herd.yaml") -> LoadedConfig:
    """Validate herd.yaml text: unknown keys, wrong types and out-of-range values are refused
    with the file's line; nothing here touches the database."""
    lines: dict[Path_, int] = {}
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = {} if node is None else _plain(node, (), lines)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else 1
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{filename}:{line}: not valid YAML: {problem}") from None
    except ConfigError as exc:
        raise ConfigError(f"{filename}:{str(exc).removeprefix('line ')}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{filename}:1: expected a mapping with deployments, aliases, keys")
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
