"""Generated paths: the shortest path to every state, and a path through every transition."""

from __future__ import annotations

import pytest

from tests import paths
from tests.driver import perform
from tests.support import INSURED, make_world


def test_every_state_is_reachable() -> None:
    assert set(paths.shortest_paths()) == set(paths.states())


def _replay(path: list[paths.Edge]) -> None:
    world = make_world()
    pid: str | None = None
    for source, event, target in path:
        if pid is not None:
            assert world.store.load(pid) is not None
            assert world.service.view(INSURED, pid).state == source
        pid = perform(world, pid, event, target)
        stored = world.store.load(pid)
        assert stored is not None
        assert stored.state == target, f"{event} from {source} went to {stored.state}"


@pytest.mark.parametrize("state", sorted(paths.shortest_paths()), ids=lambda s: f"to-{s}")
def test_shortest_path_to_state(state: str) -> None:
    path = paths.shortest_paths()[state]
    if not path:  # the initial state is never stored: nothing to replay
        assert state == paths.initial()
        return
    _replay(path)


@pytest.mark.parametrize("path", paths.covering_paths(), ids=lambda p: "{}-{}->{}".format(*p[-1]))
def test_every_transition(path: list[paths.Edge]) -> None:
    _replay(path)
