"""Block schedules of an energy graph: proper colourings, the parity split, the validator.

Residual spec §2. A block update is an exact minimisation of F_β (so F_β never rises) only when
no edge joins two states of the block: the blocks must be a proper colouring of the graph of free
states (edges to the clamped input dropped). :func:`greedy_colouring` computes one (greedy, in
order of depth from the input, ties by node order); a chain gets its even/odd split, the
Hopfield-ResNet13 the 3 blocks {1,3,5,7,9}, {2,6}, {4,8}. :func:`parity_blocks` is the reference
code's split by position, which is not proper once same-parity states interact.
"""

from __future__ import annotations

from collections.abc import Sequence

from eqprop.core.validation import SettingError

__all__ = ["depths", "greedy_colouring", "parity_blocks", "validate_blocks"]

Blocks = list[list[int]]


def depths(n: int, edges: Sequence[tuple[int, int]]) -> list[int]:
    """Shortest-path distance of each of ``n`` nodes from the input (−1) over the edges taken
    as undirected; nodes the input does not reach get ``n``."""
    adjacency: dict[int, set[int]] = {m: set() for m in range(-1, n)}
    for p, q in edges:
        adjacency[p].add(q)
        adjacency[q].add(p)
    depth = {-1: 0}
    frontier = [-1]
    while frontier:
        nxt = []
        for m in frontier:
            for k in sorted(adjacency[m]):
                if k not in depth:
                    depth[k] = depth[m] + 1
                    nxt.append(k)
        frontier = nxt
    return [depth.get(m, n) for m in range(n)]


def greedy_colouring(n: int, edges: Sequence[tuple[int, int]]) -> Blocks:
    """A proper colouring of the free nodes, greedy in depth order; blocks in colour order,
    each listing its nodes in node order."""
    neighbours: dict[int, set[int]] = {m: set() for m in range(n)}
    for p, q in edges:
        if p >= 0:
            neighbours[p].add(q)
            neighbours[q].add(p)
    depth = depths(n, edges)
    colour: dict[int, int] = {}
    for m in sorted(range(n), key=lambda k: (depth[k], k)):
        used = {colour[k] for k in neighbours[m] if k in colour}
        colour[m] = next(c for c in range(n + 1) if c not in used)
    blocks: Blocks = [[] for _ in range(max(colour.values()) + 1)]
    for m in range(n):
        blocks[colour[m]].append(m)
    validate_blocks(blocks, n, edges)
    return blocks


def parity_blocks(n: int) -> Blocks:
    """The reference code's split: nodes at even positions (s_1, s_3, …), then odd ones."""
    return [list(range(0, n, 2)), list(range(1, n, 2))]


def validate_blocks(
    blocks: Sequence[Sequence[int]],
    n: int,
    edges: Sequence[tuple[int, int]],
    names: Sequence[str] | None = None,
) -> None:
    """Check that ``blocks`` partition the ``n`` free nodes and no edge lies inside a block.

    Raises:
        SettingError: naming the node updated twice or never, or the intra-block edge.
    """
    label = list(names) if names is not None else [str(m) for m in range(n)]
    seen: dict[int, int] = {}
    for b, block in enumerate(blocks):
        for m in block:
            if m in seen or not 0 <= m < n:
                raise SettingError(f"blocks: node {m} is not a single free node of one block")
            seen[m] = b
    missing = [label[m] for m in range(n) if m not in seen]
    if missing:
        raise SettingError(f"blocks: nodes {missing} are in no block; expected each in one")
    for p, q in edges:
        if p >= 0 and seen[p] == seen[q]:
            raise SettingError(
                f"blocks: edge {label[p]}->{label[q]} lies inside block {seen[p]}; "
                "expected a proper colouring (no two interacting states in one block)"
            )
