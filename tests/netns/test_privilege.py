"""Least privilege: the project's wheel, installed into a fresh virtual environment, runs ``sidecar up``
as ``nobody`` holding only CAP_NET_ADMIN and CAP_NET_RAW (ambient, bounding set reduced to those two,
via ``setpriv``) against the embedded server in namespaces: the tunnel comes up (kill switch on),
traffic flows, SIGTERM restores everything. Without a capability it exits 1 with an error that names
the missing one. With ``--dns``, resolv.conf must be writable by that user (no CAP_DAC_OVERRIDE): the
error says so, and once the file belongs to the user it works.

Slow (the wheel is built and installed with its dependencies from the machine's pip index, ~20 s,
once per module); skipped with the reason when pip cannot install it here.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.netns import faultlib as fl
from tests.netns.nslib import Netns
from tests.netns.serve_helpers import REPO, SERVER_TUN_IP, star, write_secrets

pytestmark = pytest.mark.slow

USERS = [("alice", "*", "alice secret", "*")]
NOBODY = pwd.getpwnam("nobody")
CAP_NET_ADMIN, CAP_NET_RAW = 12, 13


@dataclass
class Install:
    root: Path
    sidecar: Path


@pytest.fixture(scope="module")
def install() -> Iterator[Install]:
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv (util-linux) is not installed")
    root = Path(tempfile.mkdtemp(prefix="pstpriv"))
    try:
        root.chmod(0o755)
        src = root / "src"  # build from a copy: the shared tree gets no build/ or egg-info
        src.mkdir()
        for name in ("pyproject.toml", "README.md"):
            shutil.copy2(REPO / name, src / name)
        shutil.copytree(REPO / "sidecar", src / "sidecar", ignore=shutil.ignore_patterns("__pycache__"))
        wheels = root / "wheels"
        argv = [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", str(src), "-w", str(wheels)]
        build = subprocess.run(argv, capture_output=True, text=True, timeout=300)
        assert build.returncode == 0, build.stderr[-2000:]
        (wheel,) = wheels.glob("pptp_sidecar-*.whl")
        venv = root / "venv"
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
        pip = subprocess.run([str(venv / "bin" / "pip"), "install", "-q", str(wheel)], capture_output=True,
                             text=True, timeout=600)  # fmt: skip
        if pip.returncode != 0:
            pytest.skip(f"pip cannot install the wheel's dependencies here: {pip.stderr.strip()[-500:]}")
        shutil.rmtree(src)
        subprocess.run(["chmod", "-R", "a+rX", str(root)], check=True)
        (root / "dev").mkdir(mode=0o755)
        yield Install(root, venv / "bin" / "sidecar")
    finally:
        shutil.rmtree(root, ignore_errors=True)


# /dev/net/tun is 0600 on some hosts (0666 on most distributions, and what `--device /dev/net/tun`
# gives a container): the client gets a 0666 node for it in a mount namespace of its own.
TUN_0666 = (
    'mount -t tmpfs pst "$0" && mknod -m 666 "$0/tun" c 10 200 && mount --bind "$0/tun" /dev/net/tun '
    '&& exec "$@"'
)


def with_tun_0666(inst: Install) -> list[str]:
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c", TUN_0666, str(inst.root / "dev")]


def as_nobody(caps: tuple[str, ...]) -> list[str]:
    wanted = ",".join(f"+{c}" for c in caps)
    argv = ["setpriv", f"--reuid={NOBODY.pw_uid}", f"--regid={NOBODY.pw_gid}", "--init-groups"]
    if caps:
        argv += [f"--inh-caps=-all,{wanted}", f"--ambient-caps={wanted}", f"--bounding-set=-all,{wanted}"]
    else:
        argv += ["--inh-caps=-all", "--bounding-set=-all"]
    return [*argv, "--"]


def start_up(
    ns: Netns,
    inst: Install,
    tmp: Path,
    server: object,
    caps: tuple[str, ...],
    args: tuple[str, ...] = (),
    name: str = "client",
) -> fl.Sidecar:
    pw = inst.root / f"{name}.password"
    pw.write_text("alice secret")
    pw.chmod(0o600)
    os.chown(pw, NOBODY.pw_uid, NOBODY.pw_gid)
    argv = fl.client_argv(server, "alice", args)  # type: ignore[arg-type]
    command = [*with_tun_0666(inst), *as_nobody(caps), str(inst.sidecar)]
    return fl.spawn(ns, argv, tmp / f"{name}.log", name, env={"PPTP_PASSWORD_FILE": str(pw)},
                    http_port=fl.CLIENT_HTTP, command=command, repo_on_path=False, cwd=inst.root)  # fmt: skip


def proc_status(pid: int) -> dict[str, str]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        out[key] = value.strip()
    return out


def test_installed_wheel_as_nobody_with_net_admin_and_net_raw(install: Install, tmp_path: Path) -> None:
    with star(1) as topo:
        ns = topo.clients[0]
        before = (ns.addr_snapshot(), ns.route_snapshot())
        secrets = write_secrets(tmp_path / "chap-secrets", USERS)
        server = fl.start_server(topo.server, tmp_path, secrets=secrets)
        client = start_up(ns, install, tmp_path, topo.server_ips[0], ("net_admin", "net_raw"))
        try:
            status = fl.wait_up(client, 20)
            assert status["encryption"].startswith("MPPE-128")
            assert fl.ping(ns, SERVER_TUN_IP, 3) == 3
            st = proc_status(client.pid())
            assert st["Uid"].split()[:2] == [str(NOBODY.pw_uid)] * 2
            caps = (1 << CAP_NET_ADMIN) | (1 << CAP_NET_RAW)
            assert int(st["CapEff"], 16) == caps and int(st["CapBnd"], 16) == caps, st
            # the installed copy runs, not the source tree
            assert str(install.root) in Path(f"/proc/{client.pid()}/cmdline").read_text()
            assert ns.run(["nft", "list", "table", "inet", "pptp_sidecar"], check=False).returncode == 0
        finally:
            code = client.stop()
            server.stop()
        assert code == 0, client.text()[-2000:]
        assert (ns.addr_snapshot(), ns.route_snapshot()) == before
        assert ns.run(["nft", "list", "table", "inet", "pptp_sidecar"], check=False).returncode != 0


@pytest.mark.parametrize(
    ("caps", "args", "names"),
    [
        ((), (), "CAP_NET_ADMIN"),  # the kill switch (nft) is first
        ((), ("--no-kill-switch",), "CAP_NET_ADMIN"),  # then the TUN device
        (("net_admin",), (), "CAP_NET_RAW"),  # the raw GRE socket
    ],
    ids=["nothing", "nothing-no-kill-switch", "net_admin-only"],
)
def test_missing_capability_is_named(
    install: Install, tmp_path: Path, caps: tuple[str, ...], args: tuple[str, ...], names: str
) -> None:
    with star(1) as topo:
        client = start_up(topo.clients[0], install, tmp_path, topo.server_ips[0], caps, args)
        try:
            code = client.popen.wait(20)
        finally:
            if client.popen.poll() is None:
                client.stop()
    text = client.text()
    assert code == 1, text[-2000:]
    assert names in text, text[-2000:]
    assert "Traceback" not in text, text[-3000:]


def test_dns_needs_a_resolv_conf_the_user_may_write(install: Install, tmp_path: Path) -> None:
    original = "nameserver 192.0.2.53\n"
    with star(1) as topo:
        ns = topo.clients[0]
        secrets = write_secrets(tmp_path / "chap-secrets", USERS)
        server = fl.start_server(topo.server, tmp_path, secrets=secrets)
        with fl.netns_resolv_conf(ns, original) as resolv:
            # root's file: the user may not write it - a clear error, the session retried
            client = start_up(ns, install, tmp_path, topo.server_ips[0], ("net_admin", "net_raw"), ("--dns",))
            try:
                client.wait_log("cannot configure the tunnel", 20)
                assert "Permission denied" in client.text() and "resolv.conf" in client.text()
            finally:
                client.stop()
            assert resolv.read_text() == original
            # the file handed to the sidecar's user (a mounted file in a pod): it works
            os.chown(resolv, NOBODY.pw_uid, NOBODY.pw_gid)
            client = start_up(ns, install, tmp_path, topo.server_ips[0], ("net_admin", "net_raw"), ("--dns",),
                              name="client2")  # fmt: skip
            try:
                fl.wait_up(client, 20)
                assert "nameserver 10.77.0.53" in resolv.read_text()
            finally:
                assert client.stop() == 0
                server.stop()
            assert resolv.read_text() == original
