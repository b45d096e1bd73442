"""Reading the suite's YAML files (experiments, profiles): UTF-8 only, PyYAML's safe loader with
limits, and a key given twice refused, each problem a located ConfigError.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from benchmark.config.validation import ConfigError

# Limits of the YAML loader: an experiment file has a few hundred nodes nested 4 deep, while an
# alias bomb expands to billions (MemoryError) and thousands of brackets overflow PyYAML's
# recursive composer (RecursionError).
YAML_MAX_NODES = 100_000
YAML_MAX_DEPTH = 50


def load_yaml_file(path: Path) -> Any:
    """The file's YAML, safe-loaded by BoundedLoader; ConfigError naming the file and the problem."""
    try:
        return yaml.load(_read_text(path), Loader=BoundedLoader)
    except _Refused as error:
        raise ConfigError(f"{path}: {error}") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML: {error}") from None
    except OSError as error:
        raise ConfigError(f"{path}: cannot be read: {error.strerror}") from None


class _Refused(yaml.YAMLError):
    """YAML that parses but that the loader refuses (too large, too deep, a key given twice)."""

    def __init__(self, mark: yaml.Mark, problem: str) -> None:
        super().__init__(f"line {mark.line + 1}: {problem}")


class BoundedLoader(yaml.SafeLoader):
    """PyYAML's safe loader that also refuses a key given twice in one mapping (PyYAML keeps the
    last silently), more than YAML_MAX_DEPTH levels of nesting and more than YAML_MAX_NODES nodes
    once aliases are expanded; each with the line. Sizes are counted as the nodes are composed, so
    a bomb is refused before anything is built."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node:
        mark = self.peek_event().start_mark
        alias = self.check_event(yaml.AliasEvent)
        self._depth += 1
        if self._depth > YAML_MAX_DEPTH:
            raise _Refused(mark, f"nested more than {YAML_MAX_DEPTH} levels deep; the suite's files need a few")
        try:
            node = super().compose_node(parent, index)
        finally:
            self._depth -= 1
        if alias:  # the anchored node, composed already, unless the alias sits inside it
            if not hasattr(node, "expanded"):
                raise _Refused(mark, "an alias refers to the node that contains it (a loop)")
            return node
        children = (node.value if isinstance(node, yaml.SequenceNode) else
                    [child for pair in node.value for child in pair] if isinstance(node, yaml.MappingNode) else [])
        node.expanded = 1 + sum(child.expanded for child in children)
        node.height = 1 + max((child.height for child in children), default=0)
        if node.expanded > YAML_MAX_NODES or node.height > YAML_MAX_DEPTH:
            raise _Refused(mark, f"expands to more than {YAML_MAX_NODES:,} values or {YAML_MAX_DEPTH} levels "
                                 "once its aliases (*name) are replaced; write the values out")
        return node

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        lines: dict[Any, int] = {}
        for key_node, _ in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key, line = self.construct_object(key_node), key_node.start_mark.line + 1
            if key in lines:
                raise _Refused(key_node.start_mark, f"key {key!r} is given twice (lines {lines[key]} and {line}); "
                                                    "YAML would keep only the last: delete one")
            lines[key] = line
        return super().construct_mapping(node, deep)


def _read_text(path: Path) -> str:
    """The file as UTF-8 text; ConfigError naming the first byte that is not."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        column = error.start - (data.rfind(b"\n", 0, error.start) + 1) + 1
        raise ConfigError(f"{path}: line {line}, column {column}: byte 0x{data[error.start]:02x} is not UTF-8 text; "
                          f"save it as UTF-8 (e.g. iconv -f latin1 -t utf-8 {path.name} > utf8.yaml)") from None
