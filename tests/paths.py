"""Paths through the machine, generated from its own definition (not listed by hand)."""

from __future__ import annotations

from collections import deque

from email_change import EmailChangeMachine

Edge = tuple[str, str, str]  # (source, event, target)


def edges() -> list[Edge]:
    """Every (source, event, target) of the machine's transition table."""
    found: list[Edge] = []
    for state in EmailChangeMachine.states:
        for transition in state.transitions:
            for event in transition.events:
                edge = (state.id, str(event.id), transition.target.id)
                if edge not in found:
                    found.append(edge)
    return found


def events() -> list[str]:
    return sorted({event for _, event, _ in edges()})


def states() -> list[str]:
    return [state.id for state in EmailChangeMachine.states]


def initial() -> str:
    return str(next(s.id for s in EmailChangeMachine.states if s.initial))


def shortest_paths() -> dict[str, list[Edge]]:
    """Breadth-first: the shortest edge list from the initial state to every reachable state."""
    paths: dict[str, list[Edge]] = {initial(): []}
    queue = deque([initial()])
    all_edges = edges()
    while queue:
        here = queue.popleft()
        for edge in all_edges:
            if edge[0] == here and edge[2] not in paths:
                paths[edge[2]] = [*paths[here], edge]
                queue.append(edge[2])
    return paths


def covering_paths() -> list[list[Edge]]:
    """One path per edge: the shortest path to its source, then the edge."""
    to = shortest_paths()
    return [[*to[edge[0]], edge] for edge in edges()]
