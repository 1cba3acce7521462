"""Fixtures for namespace tests. Every test here is marked ``netns`` and skipped with a clear reason
when this machine cannot create namespaces (not root, no /dev/net/tun, no ip/nft)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.netns import nslib

_REASON = nslib.skip_reason()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/netns/" in str(item.fspath).replace("\\", "/"):
            item.add_marker(pytest.mark.netns)
            if _REASON is not None:
                item.add_marker(pytest.mark.skip(reason=_REASON))


@pytest.fixture
def ns() -> Iterator[nslib.Netns]:
    """A fresh namespace, deleted afterwards."""
    with nslib.netns() as created:
        yield created


@pytest.fixture
def hosts() -> Iterator[nslib.TwoHosts]:
    """Client + server namespaces over veth; see :func:`nslib.two_hosts`."""
    with nslib.two_hosts() as topo:
        yield topo
