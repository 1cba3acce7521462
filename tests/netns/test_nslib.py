"""The namespace helper itself: namespaces appear and vanish, veth connects them, enter() switches."""

from __future__ import annotations

import os
import socket
import subprocess

from tests.netns import nslib


def _netns_list() -> str:
    return subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout


def test_netns_is_created_and_removed() -> None:
    with nslib.netns() as ns:
        name = ns.name
        assert name in _netns_list()
        assert "lo" in ns.links()
    assert name not in _netns_list()


def test_two_hosts_reach_each_other_through_the_gateway() -> None:
    with nslib.two_hosts() as h:
        # sockets created inside enter() live in that namespace after the block
        with h.server.enter():
            rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        with h.client.enter():
            tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            rx.bind((str(h.server_ip), 0))
            rx.settimeout(2)
            tx.sendto(b"hello", (str(h.server_ip), rx.getsockname()[1]))
            data, src = rx.recvfrom(100)
            assert data == b"hello" and src[0] == str(h.client_ip)
            assert h.client.link_stats(h.client_if).tx_packets >= 1
        finally:
            tx.close()
            rx.close()


def test_enter_switches_the_thread_and_back() -> None:
    inode = os.stat("/proc/thread-self/ns/net").st_ino
    with nslib.netns() as ns, ns.enter():
        assert os.stat("/proc/thread-self/ns/net").st_ino != inode
    assert os.stat("/proc/thread-self/ns/net").st_ino == inode


def test_popen_processes_end_with_the_namespace() -> None:
    with nslib.netns() as ns:
        proc = ns.popen(["sleep", "30"])
    assert proc.poll() is not None
