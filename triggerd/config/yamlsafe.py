"""A YAML loader that cannot explode: bounded size, nesting, node count and alias expansion.

YAML aliases let a few lines stand for an exponential tree ("billion laughs": `b: &b [*a,*a,..]`
nine levels deep is a billion nodes) or for a cycle (`a: &a [*a]`, `a: &a {<<: *a}`). PyYAML
composes both happily, as a graph; it is whoever walks that graph as a tree (our reader, a
constructor, pydantic) that runs out of time, memory or stack. `BoundedLoader` refuses such a
document while it is being composed, before anything walks it:

- a file longer than `MAX_BYTES` is not parsed at all (`read_limited`);
- more than `MAX_NODES` nodes written in one document;
- nesting deeper than `MAX_DEPTH`, counting the depth an alias brings with it, so that the tree
  the reader builds is as shallow as the limit says (`[[[[...` 100k deep is refused at level
  `MAX_DEPTH`, long before Python's recursion limit);
- more than `MAX_ALIAS_NODES` nodes reached through aliases in one document (each alias to a
  collection counts every node of the tree it stands for);
- an alias to a collection that is still being composed: a recursive alias, refused outright.

Each refusal is a `YamlLimitError` carrying the mark (line) of the offending node. YAML 1.2
booleans: only true/false, so a rule's `on:` key stays the string "on".
"""

from __future__ import annotations

import errno
import os
import re
import stat
from pathlib import Path
from typing import Any

import yaml
from yaml.events import AliasEvent, Event, MappingStartEvent, NodeEvent, SequenceStartEvent
from yaml.nodes import CollectionNode, MappingNode, Node, SequenceNode

MAX_BYTES = 4 * 1024 * 1024
MAX_NODES = 50_000
MAX_DEPTH = 64
MAX_ALIAS_NODES = 20_000

_BOOL_TAG = "tag:yaml.org,2002:bool"


class YamlLimitError(yaml.MarkedYAMLError):
    """The document is valid YAML but too big, too deep or self-referencing to be a config."""


def _refusal(message: str, event: Event) -> YamlLimitError:
    mark: Any = event.start_mark
    return YamlLimitError(None, None, message, mark)


class FileTooLargeError(Exception):
    """The file is longer than `MAX_BYTES`; `line` is the line where the limit falls."""

    def __init__(self, line: int) -> None:
        super().__init__(f"file is larger than {MAX_BYTES // (1024 * 1024)} MiB; "
                         "a config or rule file is never that big")
        self.line = line


def read_limited(path: Path) -> str:
    """The file's text, refusing (FileTooLargeError) to read more than `MAX_BYTES`, and
    refusing a FIFO or device (OSError) without blocking on it: a FIFO matched by an include
    glob would hang `check` and every reload.

    Raises OSError, UnicodeDecodeError like `Path.read_text`."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as file:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file", str(path))
        data = file.read(MAX_BYTES + 1)
    if len(data) > MAX_BYTES:
        raise FileTooLargeError(data.count(b"\n", 0, MAX_BYTES) + 1)
    return data.decode("utf-8")


class BoundedLoader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 booleans whose composer enforces the limits above."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._nodes = 0
        self._alias_nodes = 0
        self._depth = 0
        self._open: set[str] = set()  # anchors of collections still being composed
        self._size: dict[int, int] = {}  # id(collection node) -> nodes of its tree
        self._height: dict[int, int] = {}  # id(collection node) -> levels of its tree

    def fetch_flow_collection_start(self, TokenClass: Any) -> None:
        # Refused in the scanner already: it looks ahead up to 1024 characters for each open
        # `[` (a possible mapping key), which makes `[[[[...` slow long before the composer.
        if self.flow_level >= MAX_DEPTH:
            mark: Any = self.get_mark()
            raise YamlLimitError(None, None, f"nested more than {MAX_DEPTH} levels deep", mark)
        super().fetch_flow_collection_start(TokenClass)

    def compose_node(self, parent: Node | None, index: int) -> Node | None:
        event = self._peek()
        if isinstance(event, AliasEvent):
            self._check_alias(event)
            return super().compose_node(parent, index)
        self._nodes += 1
        if self._nodes > MAX_NODES:
            raise _refusal(f"more than {MAX_NODES} YAML nodes in one file", event)
        if self._depth >= MAX_DEPTH:
            raise _refusal(f"nested more than {MAX_DEPTH} levels deep", event)
        collection = isinstance(event, SequenceStartEvent | MappingStartEvent)
        anchor = event.anchor if collection else None
        if anchor is not None:
            self._open.add(anchor)
        self._depth += 1
        try:
            node = super().compose_node(parent, index)
        finally:
            self._depth -= 1
            if anchor is not None:
                self._open.discard(anchor)
        if isinstance(node, CollectionNode):
            self._measure(node)
        return node

    def _peek(self) -> NodeEvent:
        event: NodeEvent = self.peek_event()  # type: ignore[no-untyped-call]
        return event

    def _check_alias(self, event: AliasEvent) -> None:
        anchor = str(event.anchor)
        if anchor in self._open:
            raise _refusal(f"recursive alias *{anchor}: it refers to the node it is part of",
                           event)
        node = self.anchors.get(anchor)
        if not isinstance(node, CollectionNode):
            return  # a scalar costs one node; an undefined alias is PyYAML's error
        self._alias_nodes += self._size[id(node)]
        if self._alias_nodes > MAX_ALIAS_NODES:
            raise _refusal(f"aliases expand to more than {MAX_ALIAS_NODES} nodes (at *{anchor});"
                           " refusing a document that grows when its aliases are expanded "
                           "(an alias bomb?)", event)
        if self._depth + self._height[id(node)] > MAX_DEPTH:
            raise _refusal(f"alias *{anchor} nests more than {MAX_DEPTH} levels deep", event)

    def _measure(self, node: CollectionNode) -> None:
        children: list[Node] = []
        if isinstance(node, MappingNode):
            for key, value in node.value:
                children += (key, value)
        elif isinstance(node, SequenceNode):
            children = list(node.value)
        size, height = 1, 0
        for child in children:
            size += self._size.get(id(child), 1)
            height = max(height, self._height.get(id(child), 1))
        self._size[id(node)] = size
        self._height[id(node)] = height + 1


BoundedLoader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != _BOOL_TAG]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
BoundedLoader.add_implicit_resolver(
    _BOOL_TAG, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))


def load_file(path: Path) -> Any:
    """The data of a YAML file other than the config (a Kubernetes manifest), read within the
    same limits. Raises OSError, UnicodeDecodeError, FileTooLargeError or yaml.YAMLError."""
    loader = BoundedLoader(read_limited(path))
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()
