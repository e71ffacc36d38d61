"""Reading a spec file of any content in bounded time and memory.

A spec is a few KB of settings, but a file can hold anything: 50 MB of list, or a YAML
"alias bomb" (anchors nested 9 levels deep, each referencing the one below 9 times: 2 KB
that stand for 9**9 values). PyYAML composes an alias as a reference to the node it names,
so loading the bomb is cheap, but everything that walks the result afterwards (pydantic's
validation, ``model_dump``) expands every reference: 8 GB and minutes. So the loader counts
what the document stands for, aliases expanded, and stops at a limit that no real spec
comes near, before anything walks it.
"""

from __future__ import annotations

from typing import Any

import yaml

__all__ = ["MAX_SPEC_BYTES", "MAX_SPEC_DEPTH", "MAX_SPEC_NODES", "SpecLoader", "SpecTooLarge"]

# Values (scalars, lists, mappings; keys included) after aliases are expanded. The built-in
# specs have 86 to 181; 900 enqueued trials of five hyperparameters come to 10,000.
# PyYAML composes 10,000 in 0.2 to 0.45 s (measured on a busy 2-core machine), and
# pydantic validates them in milliseconds.
MAX_SPEC_NODES = 10_000
# Bytes: 10,000 values are 60 to 70 KB of YAML. 256 KiB leaves four times that for comments
# and long names, and PyYAML's pure-Python reader scans it in 0.1 to 0.2 s whatever it
# holds (1 MiB of one comment took 0.4 to 0.8 s: too slow for a file that is refused).
MAX_SPEC_BYTES = 256 << 10
# Nesting, counted in values from the top mapping: a conditional space three branches deep
# (search_space.arch.cnn.optimizer.sgd.lr.low) is 10 levels.
MAX_SPEC_DEPTH = 32


class SpecTooLarge(yaml.YAMLError):
    """The document exceeds :data:`MAX_SPEC_NODES` or :data:`MAX_SPEC_DEPTH`, or an alias
    stands for an endless structure; the message says which, and where."""


class SpecLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` (plain data, no Python objects) that counts the values it
    composes, each alias as the number of values it stands for, and raises
    :class:`SpecTooLarge` past :data:`MAX_SPEC_NODES` values or :data:`MAX_SPEC_DEPTH` levels,
    before anything is constructed from the document.

    Usage: ``yaml.load(text, Loader=SpecLoader)``.
    """

    def __init__(self, stream: Any) -> None:
        super().__init__(stream)
        self._nodes = 0
        self._depth = 0
        self._open_anchors: set[str] = set()  # anchors whose nodes are still being composed
        self._extents: dict[int, tuple[int, int]] = {}  # id(node) -> (values, depth)

    def compose_node(self, parent: Any, index: Any) -> yaml.Node:
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent):
            if event.anchor in self._open_anchors:
                raise SpecTooLarge(f"the alias *{event.anchor} at line "
                                   f"{event.start_mark.line + 1} lies inside its own anchor: "
                                   "an endless structure")
            node = super().compose_node(parent, index)  # the anchored node itself, shared
            values, depth = self._extent(node)
            self._count(values, self._depth + depth, event)
            return node
        self._count(1, self._depth + 1, event)
        anchor = getattr(event, "anchor", None)
        if anchor is not None:
            self._open_anchors.add(anchor)
        self._depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1
            self._open_anchors.discard(anchor)

    def _count(self, values: int, depth: int, event: yaml.Event) -> None:
        self._nodes += values
        line = event.start_mark.line + 1
        if self._nodes > MAX_SPEC_NODES:
            raise SpecTooLarge(f"holds more than {MAX_SPEC_NODES:,} values by line {line} "
                               "(aliases counted as the values they repeat); a spec needs a "
                               "few hundred")
        if depth > MAX_SPEC_DEPTH:
            raise SpecTooLarge(f"nests values more than {MAX_SPEC_DEPTH} levels deep at line "
                               f"{line}")

    def _extent(self, node: yaml.Node) -> tuple[int, int]:
        """(values, depth) that ``node`` stands for, aliases expanded. Each node is
        measured once; its parts were checked against the limits when composed, so the
        recursion is at most :data:`MAX_SPEC_DEPTH` deep."""
        known = self._extents.get(id(node))
        if known is not None:
            return known
        values, depth = 1, 1
        if isinstance(node, yaml.SequenceNode):
            children = node.value
        elif isinstance(node, yaml.MappingNode):
            children = [part for pair in node.value for part in pair]
        else:
            children = []
        for child in children:
            child_values, child_depth = self._extent(child)
            values += child_values
            depth = max(depth, child_depth + 1)
        self._extents[id(node)] = (values, depth)
        return values, depth
