"""The layout of a workflow drawn as a graph (the template renders it as inline SVG).

Steps are placed in columns by depth (the longest chain of parents before them) and in
rows by declaration order within a column; each dependency is an edge from the
parent's right side to the child's left side. Only geometry is computed here: names
and states reach the page through the template, which escapes them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from ..features.workflows import StepStatus

__all__ = ["MAX_DRAWN", "Layout", "layout"]

#: Most steps drawn as a graph (larger workflows are shown as a list only).
MAX_DRAWN = 300
NODE_W, NODE_H, GAP_X, GAP_Y, PAD = 170, 44, 60, 18, 10


@dataclass(frozen=True, slots=True)
class Node:
    """One step's box."""

    name: str
    job_id: str
    state: str
    x: int
    y: int


@dataclass(frozen=True, slots=True)
class Edge:
    """One dependency: from the parent's right side to the child's left side."""

    x1: int
    y1: int
    x2: int
    y2: int


@dataclass(slots=True)
class Layout:
    """Boxes, edges and the size of the drawing."""

    nodes: list[Node] = field(default_factory=list)
    edges: list[Edge] = field(default_factory=list)
    width: int = 0
    height: int = 0
    node_w: int = NODE_W
    node_h: int = NODE_H


def layout(steps: Mapping[str, StepStatus]) -> Layout | None:
    """The drawing of ``steps`` (in declaration order, parents first); None when there
    are more than ``MAX_DRAWN``."""
    if len(steps) > MAX_DRAWN:
        return None
    depth: dict[str, int] = {}
    for name, step in steps.items():
        parents = [p for p in step.depends_on if p in steps and p != name]
        depth[name] = 1 + max((depth.get(p, 0) for p in parents), default=-1)
    rows: dict[int, int] = {}
    where: dict[str, tuple[int, int]] = {}
    out = Layout()
    for name, step in steps.items():
        col = depth[name]
        row = rows.get(col, 0)
        rows[col] = row + 1
        x = PAD + col * (NODE_W + GAP_X)
        y = PAD + row * (NODE_H + GAP_Y)
        where[name] = (x, y)
        out.nodes.append(Node(name, step.job_id, step.state, x, y))
    for name, step in steps.items():
        cx, cy = where[name]
        for p in step.depends_on:
            if p in where and p != name:
                px, py = where[p]
                out.edges.append(Edge(px + NODE_W, py + NODE_H // 2, cx, cy + NODE_H // 2))
    cols = max(depth.values(), default=-1) + 1
    most = max(rows.values(), default=0)
    out.width = 2 * PAD + cols * NODE_W + max(0, cols - 1) * GAP_X
    out.height = 2 * PAD + most * NODE_H + max(0, most - 1) * GAP_Y
    return out
