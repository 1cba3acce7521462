"""A real third-party PPTP server for interop tests: Debian's pptpd + pppd in a user-mode-linux VM.

This machine (and CI) has no kernel PPP, so pptpd (1.4.0) and pppd (2.4.9, with the kernel's
``ppp_mppe``) run in a small Debian bookworm guest under user-mode-linux (UML: a Linux kernel that
runs as an ordinary process; it boots in a few seconds and carries a PPTP tunnel at ~20 Mbit/s).

Theory of operation
-------------------
- **Image** (:func:`ensure_image`): ``build_image.sh`` bootstraps bookworm with mmdebstrap (variant
  "essential" + pptpd, ppp, iproute2, iperf3, busybox, kmod, socat, ...) and packs it as a zstd
  initramfs, cached under ``$PPTP_SIDECAR_CACHE`` (default ``~/.cache/pptp-sidecar``)/interop/,
  keyed by a hash of the build inputs. The apt sources and options come from this machine's apt
  configuration at run time (:func:`apt_sources`, :func:`apt_options`); no mirror is named here.
- **Network**: a fresh network namespace (the *client side*, where ``sidecar up`` runs) holds a tap
  device with :data:`CLIENT_IP`; UML is started inside that namespace with the ``vector`` driver on
  the tap (``gro=1``: without it TCP through the tap collapses). The guest has :data:`SERVER_IP` on
  ``vec0``; pptpd hands out :data:`INSIDE_IP` as its end of every tunnel and the peer address from
  :data:`POOL`. Nothing leaves the namespace.
- **Host share**: a per-VM run directory is mounted in the guest with hostfs at ``/host``. It holds
  the guest scripts (``guest/``, copied from this package, so editing them needs no image
  rebuild), the initial configuration (``etc/``), logs written by the guest (``log/pppd.log``,
  ``log/syslog`` with pptpd's debug lines, ``log/pptpd.out``) and the command spool (``cmd/``).
- **Command channel** (:meth:`Vm.guest_exec`): the host drops a shell script in ``cmd/``; the guest
  agent runs it and leaves stdout, stderr and the exit status next to it (~0.1 s round trip).
- Teardown kills the UML process group (UML forks helper processes), deletes the namespace (and so
  the tap) and the run directory (kept when ``PPTPI_KEEP=1`` is set, for post-mortems).

Fixture API (see conftest.py and README.md in this directory)
-----------------------------------------------------------
``pptpd_vm`` (session) boots one :class:`Vm`; ``pptpd`` (per test) hands the same VM back reset to
a known state with the scenario a test asks for (``@pytest.mark.pptpd(config)``), default
:data:`MSCHAPV2_MPPE128`.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import glob
import hashlib
import itertools
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import typing
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
BUILD_SCRIPT = HERE / "build_image.sh"
GUEST_DIR = HERE / "guest"

SUITE = "bookworm"
UML_CANDIDATES = ("/usr/bin/linux.uml", "/usr/bin/linux")
UML_MODULES = Path("/usr/lib/uml/modules")

# The network plan (one private /24 on the tap link, one for the tunnels).
CLIENT_IP = "10.231.0.1"  # the tap, inside the client netns
SERVER_IP = "10.231.0.2"  # the guest's vec0: pptpd listens here on TCP 1723
PREFIX_LEN = 24
INSIDE_IP = "10.231.1.1"  # pptpd "localip": the server end of every tunnel
POOL = "10.231.1.100-119"  # pptpd "remoteip": client ends, first call gets .100
POOL_FIRST = "10.231.1.100"
DNS_IP = "10.231.1.53"  # handed out with ms-dns (nothing answers there)
GUEST_DEV = "vec0"
GUEST_MAC = "02:50:50:e7:00:02"

# Test-only credentials (they exist only inside the throw-away guest).
USER = "sidecar-test"
PASSWORD = "interop-Pa55w0rd"

BOOT_TIMEOUT = 60.0  # guest setup done (it takes ~3 s here)
PORT_TIMEOUT = 15.0  # pptpd accepting on 1723 after that
EXEC_TIMEOUT = 30.0

_CLONE_NEWNET = 0x40000000


# ---------------------------------------------------------------------------------------------
# Scenarios: what pptpd and pppd are told
# ---------------------------------------------------------------------------------------------

# pppd option lines every scenario has (the pptpd "option" file). Logging goes to the host share.
BASE_PPP_OPTIONS: tuple[str, ...] = (
    "name pptpd",
    "debug",
    "logfile /host/log/pppd.log",
    "nodefaultroute",
    f"ms-dns {DNS_IP}",
)

# Scenario presets: pppd options on top of BASE_PPP_OPTIONS. pppd's own defaults are kept
# otherwise (MRU 1500, IPV6CP offered, CCP offering Deflate/BSD-Compress when MPPE is off).
MSCHAPV2_MPPE128: tuple[str, ...] = ("auth", "require-mschap-v2", "require-mppe-128")
# "mppe-stateful" only lets pppd accept stateful mode: the client has to ask for it.
MSCHAPV2_MPPE128_STATEFUL: tuple[str, ...] = (*MSCHAPV2_MPPE128, "mppe-stateful")
MSCHAPV2_MPPE_OPTIONAL: tuple[str, ...] = ("auth", "require-mschap-v2")  # MPPE if the client asks
MSCHAPV2_NO_MPPE: tuple[str, ...] = ("auth", "require-mschap-v2", "nomppe")
MSCHAPV1_MPPE128: tuple[str, ...] = ("auth", "require-mschap", "require-mppe-128")
CHAP_MD5: tuple[str, ...] = ("auth", "require-chap")
PAP: tuple[str, ...] = ("auth", "require-pap")

PRESETS: dict[str, tuple[str, ...]] = {
    "mschapv2-mppe128": MSCHAPV2_MPPE128,
    "mschapv2-mppe128-stateful": MSCHAPV2_MPPE128_STATEFUL,
    "mschapv2-mppe-optional": MSCHAPV2_MPPE_OPTIONAL,
    "mschapv2-no-mppe": MSCHAPV2_NO_MPPE,
    "mschapv1-mppe128": MSCHAPV1_MPPE128,
    "chap-md5": CHAP_MD5,
    "pap": PAP,
}


@dataclass(frozen=True)
class PptpdConfig:
    """One server scenario.

    ``ppp``: pppd option lines added to :data:`BASE_PPP_OPTIONS` (e.g. :data:`PAP`, or your own
    tuple such as ``(*MSCHAPV2_MPPE128, "lcp-echo-interval 1", "lcp-echo-failure 3")``).
    ``pptpd``: extra pptpd.conf lines (e.g. ``("stimeout 5",)``).
    """

    ppp: tuple[str, ...] = MSCHAPV2_MPPE128
    pptpd: tuple[str, ...] = ()

    @classmethod
    def of(cls, spec: PptpdConfig | Sequence[str] | str | None) -> PptpdConfig:
        """Accepts a config, a tuple of pppd option lines, or a preset name (see PRESETS)."""
        if spec is None:
            return cls()
        if isinstance(spec, PptpdConfig):
            return spec
        if isinstance(spec, str):
            if spec not in PRESETS:
                raise ValueError(f"unknown pptpd scenario {spec!r}: use one of {sorted(PRESETS)}")
            return cls(ppp=PRESETS[spec])
        return cls(ppp=tuple(spec))

    def ppp_options_text(self) -> str:
        return "".join(f"{line}\n" for line in (*BASE_PPP_OPTIONS, *self.ppp))

    def pptpd_conf_text(self) -> str:
        lines = (
            "option /etc/ppp/pptpd-options",
            "debug",
            f"localip {INSIDE_IP}",
            f"remoteip {POOL}",
            *self.pptpd,
        )
        return "".join(f"{line}\n" for line in lines)


def _secrets_text(user: str, password: str) -> str:
    # client, server, secret, addresses: "*" lets the same entry serve CHAP, MS-CHAP and PAP.
    return f'"{user}" * "{password}" *\n'


# ---------------------------------------------------------------------------------------------
# Requirements (why the interop tests skip) and the image
# ---------------------------------------------------------------------------------------------

REQUIRED_DEBS = ("user-mode-linux", "mmdebstrap", "cpio", "zstd", "iproute2")


def uml_binary() -> str | None:
    for candidate in UML_CANDIDATES:
        if os.access(candidate, os.X_OK):
            return candidate
    return None


def missing_requirements() -> str | None:
    """None when the VM can run here, else why not and how to fix it (one line)."""
    if os.geteuid() != 0:
        return "interop tests need root (network namespaces, tap devices): run them as root"
    if not os.path.exists("/dev/net/tun"):
        return "interop tests need /dev/net/tun (tap device for the VM)"
    missing = []
    if uml_binary() is None or not UML_MODULES.is_dir():
        missing.append("user-mode-linux")
    for tool, deb in (("mmdebstrap", "mmdebstrap"), ("cpio", "cpio"), ("zstd", "zstd"), ("ip", "iproute2")):
        if shutil.which(tool) is None:
            missing.append(deb)
    if missing:
        return (
            f"interop tests need the Debian packages {' '.join(sorted(set(missing)))}: "
            f"run scripts/setup.sh or apt-get install {' '.join(sorted(set(missing)))}"
        )
    return None


def cache_dir() -> Path:
    base = os.environ.get("PPTP_SIDECAR_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "pptp-sidecar"
    )
    return Path(base) / "interop"


def image_key() -> str:
    """Hash of everything that goes into the image (the build script holds the package list)."""
    h = hashlib.sha256()
    h.update(BUILD_SCRIPT.read_bytes())
    h.update(SUITE.encode())
    h.update(os.uname().machine.encode())
    return h.hexdigest()[:16]


def _apt_paths() -> tuple[list[Path], list[Path]]:
    """(one-line .list files, deb822 .sources files) from apt's configuration."""
    out = subprocess.run(
        ["apt-config", "shell", "SL", "Dir::Etc::sourcelist/f", "SP", "Dir::Etc::sourceparts/d"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    values = dict(re.findall(r"^(SL|SP)='([^']*)'", out, flags=re.M))
    sourcelist = Path(values.get("SL", "/etc/apt/sources.list"))
    parts = Path(values.get("SP", "/etc/apt/sources.list.d/"))
    lists = [sourcelist] if sourcelist.is_file() else []
    lists += sorted(parts.glob("*.list"))
    return lists, sorted(parts.glob("*.sources"))


def _suite_matches(suite: str, target: str) -> bool:
    return suite == target or suite.startswith((f"{target}-", f"{target}/"))


def parse_deb822_sources(text: str) -> list[dict[str, str]]:
    """Stanzas of a deb822 .sources file as {lower-case field: value} (comments dropped)."""
    stanzas: list[dict[str, str]] = []
    current: dict[str, str] = {}
    last = ""
    for raw in text.splitlines():
        if raw.startswith("#"):
            continue
        if not raw.strip():
            if current:
                stanzas.append(current)
            current, last = {}, ""
            continue
        if raw[0] in " \t" and last:
            current[last] += "\n" + raw.strip()
            continue
        key, sep, value = raw.partition(":")
        if not sep:
            continue
        last = key.strip().lower()
        current[last] = value.strip()
    if current:
        stanzas.append(current)
    return stanzas


def apt_sources(
    suite: str = SUITE, *, lists: Sequence[Path] | None = None, deb822: Sequence[Path] | None = None
) -> list[str]:
    """One-line ``deb`` entries for ``suite`` (and its -updates/-security) taken from this machine
    (or from the given one-line ``lists`` and deb822 ``.sources`` files)."""
    lines: list[str] = []
    if lists is None or deb822 is None:
        found_lists, found_deb822 = _apt_paths()
        lists = found_lists if lists is None else lists
        deb822 = found_deb822 if deb822 is None else deb822
    for path in deb822:
        for st in parse_deb822_sources(path.read_text(errors="replace")):
            if st.get("enabled", "yes").lower() == "no" or "deb" not in st.get("types", "").split():
                continue
            opts = ""
            signed_by = st.get("signed-by", "")
            if signed_by and "\n" not in signed_by and signed_by.startswith("/"):
                opts = f"[signed-by={signed_by}] "
            components = " ".join(st.get("components", "main").split())
            for uri in st.get("uris", "").split():
                for s in st.get("suites", "").split():
                    if _suite_matches(s, suite):
                        lines.append(f"deb {opts}{uri} {s} {components}")
    for path in lists:
        for raw in path.read_text(errors="replace").splitlines():
            line = raw.split("#", 1)[0].strip()
            if not line.startswith("deb "):
                continue
            m = re.match(r"deb\s+(\[[^\]]*\]\s+)?(\S+)\s+(\S+)\s+(.*)", line)
            if m and _suite_matches(m.group(3), suite):
                lines.append(f"deb {m.group(1) or ''}{m.group(2)} {m.group(3)} {m.group(4).strip()}")
    return list(dict.fromkeys(lines))


_FORWARDED_APT_KEYS = re.compile(
    r"^Acquire::(https?::Proxy|ftp::Proxy|Check-Valid-Until|Check-Date|Retries|ForceIPv4|ForceIPv6)\b"
)


def apt_options() -> list[str]:
    """The machine's apt settings that the bootstrap needs too (proxies, validity checks)."""
    out = subprocess.run(["apt-config", "dump"], capture_output=True, text=True, check=False).stdout
    return [line for line in out.splitlines() if _FORWARDED_APT_KEYS.match(line)]


class ImageBuildError(RuntimeError):
    pass


def ensure_image(*, log: Path | None = None) -> Path:
    """The cached image, built first if needed (a file lock keeps parallel runs from racing)."""
    cdir = cache_dir()
    cdir.mkdir(parents=True, exist_ok=True)
    key = image_key()
    image = cdir / f"pptpd-{SUITE}-{key}.cpio.zst"
    with open(cdir / "build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if image.exists():
            return image
        sources = apt_sources()
        if not sources:
            raise ImageBuildError(
                f"no apt source for Debian {SUITE} is configured on this machine (apt-config, "
                f"/etc/apt/sources.list.d/): add one, the VM image is built from it"
            )
        build_log = log or cdir / f"build-{key}.log"
        with tempfile.TemporaryDirectory(prefix="pptpi-apt-") as tmp:
            src = Path(tmp) / "sources.list"
            src.write_text("".join(f"{line}\n" for line in sources))
            conf = Path(tmp) / "apt.conf"
            conf.write_text("".join(f"{line}\n" for line in apt_options()))
            with open(build_log, "w") as out:
                proc = subprocess.run(
                    ["bash", str(BUILD_SCRIPT), str(image), str(src), str(conf)],
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    check=False,
                )
        if proc.returncode != 0 or not image.exists():
            tail = "".join(build_log.read_text(errors="replace").splitlines(keepends=True)[-25:])
            raise ImageBuildError(f"building the pptpd VM image failed (full log {build_log}):\n{tail}")
        for old in cdir.glob(f"pptpd-{SUITE}-*.cpio.zst"):
            if old != image:
                old.unlink(missing_ok=True)
        return image


# ---------------------------------------------------------------------------------------------
# Network namespace helpers
# ---------------------------------------------------------------------------------------------

_libc = ctypes.CDLL(None, use_errno=True)


def _enter_netns(netns: str) -> None:
    """Moves the *calling thread* into ``netns`` (network namespaces are per thread)."""
    fd = os.open(f"/run/netns/{netns}", os.O_RDONLY)
    try:
        if _libc.setns(fd, _CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns into {netns}: {os.strerror(err)}")
    finally:
        os.close(fd)


def netns_socket(
    netns: str, family: int = socket.AF_INET, type: int = socket.SOCK_STREAM, proto: int = 0
) -> socket.socket:
    """A socket that lives in ``netns`` (made by a short-lived thread that enters it); use it from
    any thread, with plain or trio sockets (``trio.socket.from_stdlib_socket``)."""
    result: list[socket.socket | BaseException] = []

    def work() -> None:
        try:
            _enter_netns(netns)
            result.append(socket.socket(family, type, proto))
        except BaseException as exc:
            result.append(exc)

    t = threading.Thread(target=work, name=f"netns-{netns}")
    t.start()
    t.join()
    got = result[0]
    if isinstance(got, BaseException):
        raise got
    return got


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM it when the process that started it dies, so a test run
    killed with SIGKILL or timeout(1) leaves no VM behind. (UML exits on SIGTERM and takes its
    helper processes with it; after a SIGKILL they would linger.)"""
    _libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if check and proc.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)} failed: {proc.stderr.strip()}")
    return proc


# ---------------------------------------------------------------------------------------------
# The VM
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ExecResult:
    rc: int
    stdout: str
    stderr: str


class GuestCommandError(RuntimeError):
    pass


class VmError(RuntimeError):
    pass


_counter = itertools.count(1)


@dataclass
class Vm:
    """One running pptpd VM. Build with :meth:`Vm.boot` (or the ``pptpd_vm`` fixture).

    Attributes a tunnel test uses: ``netns`` (run ``sidecar up`` there: ``vm.netns_cmd([...])``),
    ``server_ip``, ``inside_ip`` (the server's tunnel address: iperf3 server and TCP echo on
    port 7 listen there), ``pool_first`` (the address the first client gets), ``user``,
    ``password``, ``client_ip`` and ``tap`` (the client side of the link), ``dns_ip``.
    """

    image: Path
    config: PptpdConfig = field(default_factory=PptpdConfig)
    name: str = ""
    user: str = USER
    password: str = PASSWORD
    client_ip: str = CLIENT_IP
    server_ip: str = SERVER_IP
    inside_ip: str = INSIDE_IP
    pool_first: str = POOL_FIRST
    dns_ip: str = DNS_IP
    guest_dev: str = GUEST_DEV
    boot_seconds: float = 0.0
    versions: dict[str, str] = field(default_factory=dict)
    run_dir: Path = field(default=Path())
    _proc: subprocess.Popen[bytes] | None = None
    _bell: typing.BinaryIO | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __repr__(self) -> str:
        return f"Vm(netns={self.netns!r}, server_ip={self.server_ip!r}, run_dir={str(self.run_dir)!r})"

    # -- names -------------------------------------------------------------------------------
    @property
    def netns(self) -> str:
        return f"pptpi-{self.name}"

    @property
    def tap(self) -> str:
        return f"pti{self.name}"[:15]

    @property
    def console_log(self) -> Path:
        return self.run_dir / "console.log"

    @property
    def resolv_conf(self) -> Path:
        """The resolv.conf that ``ip netns exec <netns>`` shows to processes there (so a client
        that rewrites DNS inside the namespace never touches the host's)."""
        return Path("/etc/netns") / self.netns / "resolv.conf"

    # -- lifecycle ---------------------------------------------------------------------------
    @classmethod
    def boot(cls, image: Path, config: PptpdConfig | Sequence[str] | str | None = None) -> Vm:
        vm = cls(image=image, config=PptpdConfig.of(config), name=f"{os.getpid()}t{next(_counter)}")
        try:
            vm._start()
        except BaseException:
            vm.stop(keep_run_dir=True)
            raise
        return vm

    def _start(self) -> None:
        uml = uml_binary()
        if uml is None:
            raise VmError("user-mode-linux is not installed (apt-get install user-mode-linux)")
        self.run_dir = Path(tempfile.mkdtemp(prefix=f"pptpi-{self.name}-"))
        for sub in ("etc", "log", "cmd", "state"):
            (self.run_dir / sub).mkdir()
        shutil.copytree(GUEST_DIR, self.run_dir / "guest")
        etc = self.run_dir / "etc"
        (etc / "vm.env").write_text(
            f"PPTPI_MODULES={UML_MODULES}\nPPTPI_DEV={self.guest_dev}\n"
            f"PPTPI_ADDR={self.server_ip}/{PREFIX_LEN}\n"
        )
        (etc / "pptpd.conf").write_text(self.config.pptpd_conf_text())
        (etc / "pptpd-options").write_text(self.config.ppp_options_text())
        (etc / "chap-secrets").write_text(_secrets_text(self.user, self.password))
        (etc / "pap-secrets").write_text(_secrets_text(self.user, self.password))
        os.chmod(etc / "chap-secrets", 0o600)
        os.chmod(etc / "pap-secrets", 0o600)

        _ip("netns", "add", self.netns)
        _ip("-n", self.netns, "link", "set", "lo", "up")
        _ip("-n", self.netns, "tuntap", "add", "mode", "tap", "name", self.tap)
        _ip("-n", self.netns, "addr", "add", f"{self.client_ip}/{PREFIX_LEN}", "dev", self.tap)
        _ip("-n", self.netns, "link", "set", self.tap, "up")
        self.resolv_conf.parent.mkdir(parents=True, exist_ok=True)
        self.resolv_conf.write_text(f"# pptp-sidecar interop netns {self.netns}\n")

        argv = [
            "ip", "netns", "exec", self.netns, uml,
            "mem=384M",
            f"initrd={self.image}",
            "con=null", "ssl=null", "con0=null,fd:1",
            f"vec0:transport=tap,ifname={self.tap},gro=1,mac={GUEST_MAC}",
            f"umid=pptpi-{self.name}",
            f"uml_dir={self.run_dir}",
            f"pptpi.share={self.run_dir}",
        ]  # fmt: skip
        start = time.monotonic()
        # The command channel's doorbell: a pipe that the guest reads as its console /dev/tty1.
        bell_r, bell_w = os.pipe()
        argv.insert(argv.index("con=null") + 1, f"con1=fd:{bell_r},null")
        try:
            with open(self.console_log, "wb") as console:
                self._proc = subprocess.Popen(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=console,
                    stderr=subprocess.STDOUT,
                    pass_fds=(bell_r,),
                    # Only from the main thread: PDEATHSIG fires when the forking *thread* ends.
                    preexec_fn=_die_with_parent
                    if threading.current_thread() is threading.main_thread()
                    else None,
                    cwd=self.run_dir,
                    start_new_session=True,  # its own process group: teardown kills UML's helpers
                    env={**os.environ, "TMPDIR": str(self.run_dir)},
                )
        finally:
            os.close(bell_r)
        self._bell = os.fdopen(bell_w, "wb", buffering=0)
        ready = self.run_dir / "state" / "ready"  # setup done, pptpd started
        agent = self.run_dir / "state" / "agent"  # the command channel listens
        deadline = start + BOOT_TIMEOUT
        while not (ready.exists() and agent.exists()):
            if self._proc.poll() is not None:
                raise VmError(f"the VM exited during boot (rc {self._proc.returncode}){self._console_tail()}")
            if time.monotonic() > deadline:
                raise VmError(
                    f"the VM did not finish booting within {BOOT_TIMEOUT:.0f} s{self._console_tail()}"
                )
            time.sleep(0.05)
        self.wait_port(PORT_TIMEOUT)
        self.boot_seconds = time.monotonic() - start
        self.versions = dict(
            line.split(" ", 1) for line in self.guest_exec("cat /pptpi-versions").stdout.splitlines() if line
        )

    def _console_tail(self, lines: int = 30) -> str:
        try:
            text = self.console_log.read_text(errors="replace")
        except OSError:
            return ""
        tail = "".join(text.splitlines(keepends=True)[-lines:])
        return f"\n--- last lines of {self.console_log} ---\n{tail}"

    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def stop(self, *, keep_run_dir: bool = False) -> None:
        """Kills UML (its whole process group), removes the netns (and the tap with it)."""
        if self._proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._proc.wait(timeout=10)
            # UML's helper processes die a moment after the main one: wait for the group to empty.
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                try:
                    os.killpg(self._proc.pid, 0)
                except ProcessLookupError:
                    break
                time.sleep(0.05)
            self._proc = None
        if self._bell is not None:
            with contextlib.suppress(OSError):
                self._bell.close()
            self._bell = None
        if self.name:
            if os.path.exists(f"/run/netns/{self.netns}"):
                _ip("netns", "delete", self.netns, check=False)
            shutil.rmtree(self.resolv_conf.parent, ignore_errors=True)
        keep = keep_run_dir or os.environ.get("PPTPI_KEEP") == "1"
        if self.run_dir != Path() and self.run_dir.exists() and not keep:
            shutil.rmtree(self.run_dir, ignore_errors=True)

    def __enter__(self) -> Vm:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- the command channel -----------------------------------------------------------------
    def guest_exec(self, command: str, *, timeout: float = EXEC_TIMEOUT, check: bool = True) -> ExecResult:
        """Runs ``command`` with /bin/sh in the guest (as root) and returns its exit status and
        output. Detach daemons yourself (``cmd >/dev/null 2>&1 &``)."""
        if not self.alive():
            raise VmError(f"the VM is not running{self._console_tail()}")
        spool = self.run_dir / "cmd"
        with self._lock:
            cid = f"c{time.monotonic_ns()}-{next(_counter)}"
            (spool / f"{cid}.sh").write_text(command + "\n")
        self._ring(cid)
        rc_file = spool / f"{cid}.rc"
        started = spool / f"{cid}.started"
        now = time.monotonic()
        deadline = now + timeout
        ring_again = now + 2.0
        delay = 0.002
        while not (rc_text := _read(rc_file)).endswith("\n"):
            now = time.monotonic()
            if now > deadline:
                raise TimeoutError(f"guest command did not finish within {timeout:.0f} s: {command!r}")
            if not self.alive():
                raise VmError(f"the VM died while running {command!r}{self._console_tail()}")
            if now > ring_again and not started.exists():
                self._ring(cid)  # a lost doorbell (agent restarting): harmless if it was heard
                ring_again = now + 2.0
            time.sleep(delay)
            delay = min(delay * 2, 0.05)
        rc = int(rc_text)
        result = ExecResult(
            rc,
            (spool / f"{cid}.out").read_text(errors="replace"),
            (spool / f"{cid}.err").read_text(errors="replace"),
        )
        for suffix in ("sh", "started", "out", "err", "rc"):
            (spool / f"{cid}.{suffix}").unlink(missing_ok=True)
        if check and rc != 0:
            raise GuestCommandError(
                f"guest command failed (rc {rc}): {command!r}\n"
                f"stdout: {result.stdout}\nstderr: {result.stderr}"
            )
        return result

    def _ring(self, cid: str) -> None:
        with self._lock:
            assert self._bell is not None
            try:
                self._bell.write(f"{cid}\n".encode())
            except (BrokenPipeError, ValueError) as exc:
                raise VmError(f"the VM's command channel is closed{self._console_tail()}") from exc

    # -- pptpd control -----------------------------------------------------------------------
    # (Guest commands source guest/lib.sh: shell builtins instead of pgrep & co, because every
    # exec costs ~50 ms under UML.)
    def start_pptpd(self) -> None:
        """Starts pptpd (if it is not running) and waits until it accepts on TCP 1723."""
        self.guest_exec(f"{_LIB}pptpd_start")
        self.wait_port(PORT_TIMEOUT)

    def kill_pptpd(self, sig: str = "KILL", *, sessions: bool = True) -> None:
        """Stops pptpd with ``sig``; with ``sessions`` also its live calls (pptpctrl and pppd get
        the same signal: TERM makes pppd send LCP Terminate-Request, KILL just vanishes).
        Returns once they are gone."""
        sig = sig.upper().removeprefix("SIG")
        if not re.fullmatch(r"[A-Z0-9]+", sig):
            raise ValueError(f"bad signal name {sig!r}: use e.g. TERM or KILL")
        self.guest_exec(f"{_LIB}pptpd_stop {sig}{' sessions' if sessions else ''}")

    def restart_pptpd(self, config: PptpdConfig | Sequence[str] | str | None = None) -> None:
        """Kills pptpd and its calls, installs ``config`` (default: keep the current one), starts
        it again and waits until it accepts on 1723."""
        if config is not None:
            self.config = PptpdConfig.of(config)
        self.guest_exec(
            f"{_LIB}pptpd_stop KILL sessions || exit\n"
            + _write_file_cmd("/etc/pptpd.conf", self.config.pptpd_conf_text())
            + _write_file_cmd("/etc/ppp/pptpd-options", self.config.ppp_options_text())
            + "pptpd_start\n"
        )
        self.wait_port(PORT_TIMEOUT)

    def sessions(self) -> list[str]:
        """Command lines of the live ``pppd`` processes in the guest (one per call)."""
        out = self.guest_exec(f"{_LIB}sessions").stdout
        return [line.strip() for line in out.splitlines() if line.strip()]

    def reset(self, config: PptpdConfig | Sequence[str] | str | None = None) -> None:
        """A known state for the next test: no calls, no netem, empty logs, ``config`` (default
        :data:`MSCHAPV2_MPPE128`) active and pptpd listening."""
        want = PptpdConfig.of(config)
        # netem is cleared even when we did not set it (a test may have run tc itself).
        script = [_LIB.strip(), "signal_all KILL pptpctrl pppd", "wait_gone 5 pppd || exit 4", _NETEM_OFF]
        if want != self.config:
            self.config = want
            script += [
                "pptpd_stop KILL || exit 5",
                _write_file_cmd("/etc/pptpd.conf", want.pptpd_conf_text()).strip(),
                _write_file_cmd("/etc/ppp/pptpd-options", want.ppp_options_text()).strip(),
            ]
        script += [": >/host/log/pppd.log; : >/host/log/syslog", "pptpd_start"]
        result = self.guest_exec("\n".join(script), check=False)
        if result.rc == 4:
            raise VmError("pppd sessions in the guest did not end after SIGKILL")
        if result.rc != 0:
            raise VmError(f"resetting pptpd failed (rc {result.rc}): {result.stdout}{result.stderr}")
        self.wait_port(PORT_TIMEOUT)

    # -- logs --------------------------------------------------------------------------------
    def pppd_log(self) -> str:
        """pppd's log (``debug``: every packet decoded) since the last :meth:`reset`."""
        return _read(self.run_dir / "log" / "pppd.log")

    def pptpd_log(self) -> str:
        """syslog of the guest: pptpd and pptpctrl debug lines (and pppd's, tagged)."""
        return _read(self.run_dir / "log" / "syslog")

    def wait_for_log(self, pattern: str, *, timeout: float = 10.0, log: str = "pppd") -> re.Match[str]:
        """Waits until ``pattern`` (a regex) appears in the pppd (or "pptpd") log."""
        reader = self.pppd_log if log == "pppd" else self.pptpd_log
        rx = re.compile(pattern, re.M)
        deadline = time.monotonic() + timeout
        while True:
            m = rx.search(reader())
            if m:
                return m
            if time.monotonic() > deadline:
                tail = "".join(reader().splitlines(keepends=True)[-20:])
                raise TimeoutError(
                    f"{pattern!r} not in the {log} log after {timeout:.0f} s; its tail:\n{tail}"
                )
            time.sleep(0.05)

    # -- network -----------------------------------------------------------------------------
    def netem(self, spec: str | None, *, direction: str = "out") -> None:
        """Impairs the guest's link with tc netem, e.g. ``"delay 10ms reorder 25% 50%"``.

        ``direction``: "out" (server to client: the guest's egress on vec0), "in" (client to
        server: vec0's ingress redirected through ifb0) or "both". ``None`` removes it (both
        directions). The host kernel here has no netem, so both sides live in the guest.
        """
        if spec is None:
            self.guest_exec(_NETEM_OFF)
            return
        if direction not in ("out", "in", "both"):
            raise ValueError(f"netem direction {direction!r}: use 'out', 'in' or 'both'")
        if not re.fullmatch(r"[A-Za-z0-9 .%_-]+", spec):
            raise ValueError(f"netem spec {spec!r} has characters tc does not take")
        cmds = []
        if direction in ("out", "both"):
            cmds.append(f"tc qdisc replace dev {self.guest_dev} root netem {spec}")
        if direction in ("in", "both"):
            cmds += [
                f"tc qdisc add dev {self.guest_dev} handle ffff: ingress 2>/dev/null || true",
                f"tc filter replace dev {self.guest_dev} parent ffff: prio 1 matchall "
                "action mirred egress redirect dev ifb0",
                f"tc qdisc replace dev ifb0 root netem {spec}",
            ]
        self.guest_exec(" && ".join(cmds))

    def netns_cmd(self, argv: Iterable[str]) -> list[str]:
        """``argv`` prefixed to run in the client netns (for subprocess / trio.run_process)."""
        return ["ip", "netns", "exec", self.netns, *argv]

    def socket(
        self, family: int = socket.AF_INET, type: int = socket.SOCK_STREAM, proto: int = 0
    ) -> socket.socket:
        """A socket in the client netns (see :func:`netns_socket`)."""
        return netns_socket(self.netns, family, type, proto)

    def wait_port(self, timeout: float, port: int = 1723) -> None:
        """Polls TCP ``port`` on the server from the client netns until it accepts."""
        deadline = time.monotonic() + timeout
        last: OSError | None = None
        while time.monotonic() < deadline:
            with self.socket() as s:
                s.settimeout(1.0)
                try:
                    s.connect((self.server_ip, port))
                    return
                except OSError as exc:
                    last = exc
            time.sleep(0.1)
        raise VmError(
            f"{self.server_ip}:{port} not accepting after {timeout:.0f} s ({last}){self._console_tail()}"
        )


_LIB = ". /host/guest/lib.sh\n"
_NETEM_OFF = (
    f"printf 'qdisc del dev {GUEST_DEV} root\\nqdisc del dev {GUEST_DEV} ingress\\n"
    "qdisc del dev ifb0 root\\n' | tc -force -batch - 2>/dev/null; true"
)


def _write_file_cmd(path: str, content: str) -> str:
    marker = "PPTPI_EOF"
    if marker in content:
        raise ValueError("config content must not contain the heredoc marker")
    return f"cat >{path} <<'{marker}'\n{content}{marker}\n"


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except FileNotFoundError:
        return ""


@contextlib.contextmanager
def running_vm(config: PptpdConfig | Sequence[str] | str | None = None) -> Iterator[Vm]:
    """``with running_vm() as vm:`` outside pytest (builds the image first if needed)."""
    vm = Vm.boot(ensure_image(), config)
    try:
        yield vm
    finally:
        vm.stop()


def cleanup_leftovers() -> list[str]:
    """Removes what VMs of dead test processes left (a run killed with SIGKILL cannot clean up;
    its UML died with it through PDEATHSIG): their netns, /etc/netns entry and run directory.
    Returns what it removed."""
    removed = []
    candidates = [
        *glob.glob("/run/netns/pptpi-*"),
        *glob.glob("/etc/netns/pptpi-*"),
        *glob.glob(os.path.join(tempfile.gettempdir(), "pptpi-*t*-*")),
    ]
    for path in candidates:
        m = re.match(r"pptpi-(\d+)t\d+", os.path.basename(path))
        if not m or _pid_alive(int(m.group(1))):
            continue
        if path.startswith("/run/netns/"):
            _ip("netns", "delete", os.path.basename(path), check=False)
        else:
            shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    return removed


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError as exc:
        return exc.errno == errno.EPERM
    return True


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m tests.interop.vm build|shell|cleanup``: build the image, boot a VM and wait
    (prints how to reach it; Ctrl-C stops it), or remove leftovers of killed test runs."""
    import sys

    args = list(sys.argv[1:] if argv is None else argv)
    cmd = args[0] if args else "build"
    if (why := missing_requirements()) is not None:
        print(why, file=sys.stderr)
        return 2
    if cmd == "build":
        t0 = time.monotonic()
        image = ensure_image()
        print(f"{image} ({time.monotonic() - t0:.1f} s)")
        return 0
    if cmd == "shell":
        with running_vm(args[1] if len(args) > 1 else None) as vm:
            print(f"booted in {vm.boot_seconds:.1f} s: {vm.versions}")
            print(f"netns {vm.netns}, server {vm.server_ip}, run dir {vm.run_dir}")
            print(f"user {vm.user!r} password {vm.password!r} (test-only credentials)")
            print("guest commands: type a line (Ctrl-D to stop)")
            for line in sys.stdin:
                r = vm.guest_exec(line, check=False)
                print(r.stdout + r.stderr + f"[rc {r.rc}]")
        return 0
    if cmd == "cleanup":
        for path in cleanup_leftovers():
            print(f"removed {path}")
        return 0
    print("usage: python -m tests.interop.vm build|shell [scenario]|cleanup", file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
