"""Stateful MPPE: a lost CCP Reset-Request (or a lost flushed packet) must not cost seconds.

Found by the reliability tests (tests/netns/test_faults.py, 5 % GRE loss with --mppe-stateful): with
the Reset-Request asked again only after ``restart_interval`` (3 s), one unlucky loss froze a
direction for 3 s - a ping stream every 50 ms got 2 of 60 answers in some runs; with a 1 s retry
(pppd waits about a second for the Reset-Ack) the worst of 10 runs was 27 of 60.
"""

from __future__ import annotations

from sidecar.proto.ppp import frame as F
from tests.unit.test_ppp_link import Harness, client_config, ipv4_packet, server_config


def test_reset_request_is_asked_again_within_a_second_while_packets_keep_failing() -> None:
    h = Harness.make(client_config(mppe_stateful=True), server_config(mppe_stateful=True))
    h.run()
    c, s = h.client, h.server
    assert c.config.restart_interval == 3.0  # the default: the retry must not wait for it
    start = h.now
    assert c.send_ip(ipv4_packet(b"lost"), start) is not None
    frame = c.send_ip(ipv4_packet(b"after loss"), start)
    assert frame is not None and s.receive(frame, start) == []
    assert s.counters.reset_requests_sent == 1
    s.frames_to_send()  # the Reset-Request is lost too
    resent_at = None
    for i in range(1, 31):  # the client keeps sending, 10 packets a second; the server cannot read them
        t = start + i * 0.1
        frame = c.send_ip(ipv4_packet(b"ping %d" % i), t)
        assert frame is not None and s.receive(frame, t) == []
        if s.counters.reset_requests_sent == 2:
            resent_at = t
            break
    assert resent_at is not None and resent_at - start <= 1.0 + 1e-9, resent_at
    (reset,) = s.frames_to_send()
    assert F.decode_control(F.decode_frame(reset)[1]).code == F.RESET_REQUEST
    c.receive(reset, resent_at)  # this one arrives: the next packet is flushed and the server resyncs
    c.frames_to_send()
    frame = c.send_ip(ipv4_packet(b"flushed"), resent_at)
    assert frame is not None and s.receive(frame, resent_at) == [ipv4_packet(b"flushed")]


def test_no_reset_request_storm_while_the_resync_waits() -> None:
    h = Harness.make(client_config(mppe_stateful=True), server_config(mppe_stateful=True))
    h.run()
    c, s = h.client, h.server
    start = h.now
    c.send_ip(ipv4_packet(b"lost"), start)
    for i in range(100):  # 100 failing packets within 0.99 s: still one Reset-Request
        t = start + i * 0.01
        frame = c.send_ip(ipv4_packet(b"x"), t)
        assert frame is not None
        s.receive(frame, t)
    assert s.counters.reset_requests_sent == 1
