"""YAML read with bounds: PyYAML's safe loader, refusing alias bombs and deep nesting while the document is composed.

`yaml.safe_load` builds only plain data, but an alias (`*name`) shares a node, so 300 bytes of nested aliases
("billion laughs") load instantly into a structure that expands to billions of items the moment anything walks it
(`str()`, `json.dumps`, a copy): the platform does. Here every node is measured as it is composed, with aliases
expanded: its nodes, the characters of its scalars, its depth (see `xsoar_local.bounds`). A document over a bound
fails at the first node that crosses it, before anything is constructed; an alias inside the node it names (a cycle)
is refused too.
"""

from __future__ import annotations

from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from xsoar_local import bounds


class YamlBoundError(yaml.YAMLError):
    """A YAML document over one of the bounds; the message names the bound, the value seen, the line and the fix."""

    def __init__(self, message: str, line: int | None) -> None:
        self.line = line
        super().__init__(f"{message} (at line {line})" if line is not None else message)


class BoundedLoader(yaml.SafeLoader):
    """`yaml.SafeLoader` that measures each node as it composes it, aliases expanded."""

    def __init__(self, stream: str | bytes) -> None:
        super().__init__(stream)
        self._depth = 0
        # id(node) -> (nodes, characters, depth) of the node once expanded; only while the document is composed.
        self._measured: dict[int, tuple[int, int, int]] = {}

    def compose_document(self) -> Node | None:
        try:
            return super().compose_document()
        finally:
            self._measured.clear()

    def compose_node(self, parent: Node | None, index: Any) -> Node:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            target = self.anchors.get(event.anchor)
            if target is not None and id(target) not in self._measured:
                raise YamlBoundError(
                    f"alias *{event.anchor} is inside the node it names, a cycle;"
                    " fix: write the repeated part out instead of the alias",
                    _line(event.start_mark),
                )
            return super().compose_node(parent, index)
        self._depth += 1
        if self._depth > bounds.MAX_YAML_DEPTH:
            raise _over("nests", self._depth, "levels deep", "MAX_YAML_DEPTH", self.peek_event())
        try:
            node = super().compose_node(parent, index)
        finally:
            self._depth -= 1
        self._measure(node)
        return node

    def _measure(self, node: Node) -> None:
        if isinstance(node, ScalarNode):
            size = (1, len(node.value), 1)
        else:
            children: list[Node] = node.value if isinstance(node, SequenceNode) else []
            if isinstance(node, MappingNode):
                children = [part for pair in node.value for part in pair]
            nodes, chars, depth = 1, 0, 0
            for child in children:
                child_nodes, child_chars, child_depth = self._measured[id(child)]
                nodes += child_nodes
                chars += child_chars
                depth = max(depth, child_depth)
            size = (nodes, chars, depth + 1)
        nodes, chars, depth = size
        if nodes > bounds.MAX_YAML_NODES:
            raise _over("expands, aliases included, to", nodes, "nodes", "MAX_YAML_NODES", node)
        if chars > bounds.MAX_YAML_CHARS:
            raise _over("expands, aliases included, to", chars, "characters of scalars", "MAX_YAML_CHARS", node)
        if self._depth + depth > bounds.MAX_YAML_DEPTH:
            raise _over("nests, aliases expanded,", self._depth + depth, "levels deep", "MAX_YAML_DEPTH", node)
        self._measured[id(node)] = size


def load(text: str | bytes) -> Any:
    """The one YAML document in `text`, as `yaml.safe_load` gives it, within the bounds; raises `yaml.YAMLError`
    (`YamlBoundError` for a bound)."""
    loader = BoundedLoader(text)
    try:
        return loader.get_single_data()
    except (ValueError, RecursionError) as exc:
        # A scalar the constructor cannot build, e.g. an integer of more digits than Python converts.
        raise yaml.YAMLError(f"a value cannot be read: {' '.join(str(exc).split(';')[0].split())}") from None
    finally:
        loader.dispose()


def _over(what: str, seen: int, unit: str, bound: str, where: Any) -> YamlBoundError:
    limit: int = getattr(bounds, bound)
    if bound == "MAX_YAML_DEPTH":
        fix = "flatten the document"
    else:
        fix = "write the repeated parts out instead of aliasing them (*name)"
    return YamlBoundError(
        f"the YAML {what} {seen:,} {unit}, over the bound of {limit:,} ({bound});"
        f" fix: {fix}, or raise {bounds.bound_name(bound)}",
        _line(getattr(where, "start_mark", None)),
    )


def _line(mark: Any) -> int | None:
    return mark.line + 1 if mark is not None else None
