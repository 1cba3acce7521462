"""Dockerfile, compose.yaml and k8s/: linters/validators pass, and the facts that make them work hold.

The validators are run against a deliberately broken copy too, so a validator that silently checks
nothing would fail these tests. The compose and Kubernetes configuration of the sidecar (flags and
PPTP_* variables, secret files) is fed through sidecar.config, so a typo there fails here rather
than at ``docker compose up``.
"""

from __future__ import annotations

import copy
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from sidecar.config import build_serve_settings, build_up_settings
from sidecar.server.secrets import parse_secrets

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
CAPS = "cap_net_admin,cap_net_raw+ep"


# -- Dockerfile -------------------------------------------------------------------------------------------
def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for line in text.splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):
            continue
        pending += " " + stripped.rstrip("\\").strip() if pending else stripped.rstrip("\\").strip()
        if not stripped.endswith("\\"):
            word, _, rest = pending.partition(" ")
            out.append((word.upper(), rest.strip()))
            pending = ""
    return out


DOCKERFILE = (ROOT / "Dockerfile").read_text()
INSTR = instructions(DOCKERFILE)


def _hadolint(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / "hadolint"), str(path)], capture_output=True, text=True, timeout=60)


def test_hadolint_clean() -> None:
    result = _hadolint(ROOT / "Dockerfile")
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == ""


def test_hadolint_does_catch_problems(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text(
        DOCKERFILE.replace("USER 10001:10001", "USER root").replace("--no-cache-dir --no-index", "")
    )
    result = _hadolint(bad)
    assert result.returncode != 0 and "DL3002" in result.stdout  # last USER should not be root


def test_multi_stage_slim_python_311() -> None:
    froms = [args for word, args in INSTR if word == "FROM"]
    assert len(froms) >= 2
    assert all(re.match(r"python:3\.11-slim", f) for f in froms)
    assert froms[0].endswith(" AS build")
    final_stage = DOCKERFILE.rsplit("\nFROM ", 1)[1]
    assert "COPY --from=build /wheels" in final_stage
    run_lines = " ".join(args for word, args in INSTR if word == "RUN")
    assert "apt-get install" in run_lines and "nftables" in run_lines and "iproute2" in run_lines
    assert "rm -rf /var/lib/apt/lists/*" in run_lines


def test_runs_as_non_root_with_file_capabilities_on_its_entrypoint() -> None:
    users = [args for word, args in INSTR if word == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    uid = users[-1].split(":")[0]
    run_lines = " ".join(args for word, args in INSTR if word == "RUN")
    assert f"--uid {uid}" in run_lines
    [entry] = [args for word, args in INSTR if word == "ENTRYPOINT"]
    binary = yaml.safe_load(entry)[0]
    assert f"setcap {CAPS} {binary}" in run_lines  # NET_ADMIN + NET_RAW, nothing more
    assert "setcap cap_net_admin+ep /usr/sbin/nft" in run_lines  # the kill switch's child process
    caps = re.findall(r"setcap (\S+)", run_lines)
    assert set(caps) <= {CAPS, "cap_net_admin+ep"}
    assert yaml.safe_load(entry)[1:] == ["-m", "sidecar"]


def test_healthcheck_uses_the_cli() -> None:
    [hc] = [args for word, args in INSTR if word == "HEALTHCHECK"]
    cmd = hc.split("CMD", 1)[1].strip()
    assert yaml.safe_load(cmd)[:2] == ["sidecar", "healthcheck"]
    assert "--interval=" in hc and "--timeout=" in hc


def test_no_secret_baked_into_the_image() -> None:
    assert "PPTP_PASSWORD" not in DOCKERFILE
    ignore = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert ignore[0] == "**"  # everything out by default (so compose/secrets, .venv, .git never go in)
    allowed = [line[1:] for line in ignore if line.startswith("!")]
    assert sorted(allowed) == ["README.md", "pyproject.toml", "sidecar/"]


# -- compose.yaml -----------------------------------------------------------------------------------------
COMPOSE_PATH = ROOT / "compose.yaml"
COMPOSE: dict[str, Any] = yaml.safe_load(COMPOSE_PATH.read_text())
SERVICES: dict[str, Any] = COMPOSE["services"]


def _compose_schema(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_compose_matches_the_compose_spec_schema() -> None:
    result = _compose_schema(COMPOSE_PATH)
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_schema_check_does_reject_mistakes(tmp_path: Path) -> None:
    broken = copy.deepcopy(COMPOSE)
    broken["services"]["vpn"]["cap_add"] = "NET_ADMIN"  # must be a list
    broken["services"]["vpn"]["healthcheck"]["intervall"] = "5s"  # unknown key
    path = tmp_path / "compose.yaml"
    path.write_text(yaml.safe_dump(broken))
    assert _compose_schema(path).returncode != 0


def _secret_file(name: str) -> Path:
    return ROOT / COMPOSE["secrets"][name]["file"]


def _with_local_secrets(value: str) -> str:
    """Map /run/secrets/<name> (inside the container) to the repository file compose mounts there."""
    for name in COMPOSE["secrets"]:
        value = value.replace(f"/run/secrets/{name}", str(_secret_file(name)))
    return value


def test_vpn_service_is_a_working_sidecar() -> None:
    vpn = SERVICES["vpn"]
    assert vpn["command"] == ["up"]
    assert set(vpn["cap_add"]) == {"NET_ADMIN", "NET_RAW"}
    assert "/dev/net/tun:/dev/net/tun" in vpn["devices"]
    assert "security_opt" not in vpn  # no-new-privileges would disable the image's file capabilities
    env = {k: str(v) for k, v in vpn["environment"].items()}
    assert "PPTP_PASSWORD" not in env  # the password comes from a secret file
    secret_name = env["PPTP_PASSWORD_FILE"].removeprefix("/run/secrets/")
    assert secret_name in vpn["secrets"]
    test = vpn["healthcheck"]["test"]
    assert test[0] == "CMD" and test[1:] == ["sidecar", "healthcheck", "--ready"]
    # The environment is a valid configuration for `sidecar up` (secret file read from the repo).
    settings = build_up_settings({}, {k: _with_local_secrets(v) for k, v in env.items()})
    assert settings.server == "server" and settings.http == ("127.0.0.1", 9101)


def test_app_waits_for_the_tunnel_and_shares_its_network() -> None:
    app = SERVICES["app"]
    assert app["network_mode"] == "service:vpn" and "networks" not in app
    assert app["depends_on"]["vpn"]["condition"] == "service_healthy"
    target = SERVICES["lan-web"]["networks"]["lan"]["ipv4_address"]
    script = " ".join(app["command"])
    assert f"wget -q -T 5 -O - http://{target}/" in script and f"ping -c 1 -W 2 {target}" in script
    # lan-web is only on the internal LAN, which the vpn is not on: the tunnel is the only way there
    assert COMPOSE["networks"]["lan"]["internal"] is True
    assert "lan" not in SERVICES["vpn"]["networks"] and "lan" in SERVICES["server"]["networks"]


def test_server_service_config_is_valid_and_knows_the_vpn_user() -> None:
    server = SERVICES["server"]
    assert server["command"][0] == "serve"
    flags: dict[str, Any] = {}
    for arg in server["command"][1:]:
        name, _, value = arg.removeprefix("--").partition("=")
        flags[name.replace("-", "_")] = _with_local_secrets(value)
    settings = build_serve_settings(flags, {})
    assert settings.secrets == _secret_file("chap-secrets")
    assert server["sysctls"]["net.ipv4.ip_forward"] == 1
    # The vpn's user and password are in the server's chap-secrets.
    entries = parse_secrets(settings.secrets.read_text())
    password = _secret_file("vpn-password").read_text().rstrip("\n")
    user = SERVICES["vpn"]["environment"]["PPTP_USER"]
    assert any(e.client in (user, "*") and e.secret.reveal() == password for e in entries)
    # lan-web routes the tunnel's pool back via the server's LAN address
    lan_ip = server["networks"]["lan"]["ipv4_address"]
    assert f"ip route add 192.168.77.0/24 via {lan_ip}" in " ".join(SERVICES["lan-web"]["command"])
    assert all(str(a).startswith("192.168.77.") for a in settings.pool)


def test_secret_files_readable_by_the_container_user() -> None:
    for name in COMPOSE["secrets"]:
        mode = _secret_file(name).stat().st_mode
        assert mode & 0o004, f"{name} must be world-readable for uid 10001 (compose mounts host modes)"


# -- k8s/ ------------------------------------------------------------------------------------------------
K8S = ROOT / "k8s"
KUSTOMIZATION = yaml.safe_load((K8S / "kustomization.yaml").read_text())
DOCS = [doc for name in KUSTOMIZATION["resources"] for doc in yaml.safe_load_all((K8S / name).read_text())]
DEPLOYMENT = next(d for d in DOCS if d["kind"] == "Deployment")
SECRET = next(d for d in DOCS if d["kind"] == "Secret")
POD = DEPLOYMENT["spec"]["template"]["spec"]
VPN = next(c for c in POD["initContainers"] if c["name"] == "vpn")
SCHEMA_DIR = Path(kubernetes_validate.__file__).parent / "kubernetes-json-schema"
# Native sidecars (init containers with restartPolicy: Always) are on by default from 1.29.
VERSIONS = sorted(
    {d.name.split("-")[0][1:] for d in SCHEMA_DIR.iterdir() if d.name.endswith("-local-strict")},
    key=lambda v: tuple(int(x) for x in v.split(".")),
)
NATIVE_SIDECAR_VERSIONS = [v for v in VERSIONS if tuple(int(x) for x in v.split(".")[:2]) >= (1, 29)]


def test_kustomization_lists_the_manifests() -> None:
    assert sorted(KUSTOMIZATION["resources"]) == sorted(
        p.name for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml"
    )
    assert {d["kind"] for d in DOCS} == {"Deployment", "Secret"}


@pytest.mark.parametrize("version", NATIVE_SIDECAR_VERSIONS)
def test_manifests_validate_strictly(version: str) -> None:
    for doc in DOCS:
        kubernetes_validate.validate(doc, version, strict=True)


def test_strict_validation_rejects_unknown_fields() -> None:
    assert NATIVE_SIDECAR_VERSIONS, "kubernetes-validate has no schema for 1.29+"
    broken = copy.deepcopy(DEPLOYMENT)
    broken["spec"]["template"]["spec"]["initContainers"][0]["startupProb"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, NATIVE_SIDECAR_VERSIONS[-1], strict=True)


def test_vpn_is_a_native_sidecar_gating_the_app() -> None:
    assert VPN["restartPolicy"] == "Always"
    assert VPN["startupProbe"]["exec"]["command"] == ["sidecar", "healthcheck", "--ready"]
    assert VPN["livenessProbe"]["exec"]["command"] == ["sidecar", "healthcheck"]
    assert VPN["readinessProbe"]["exec"]["command"] == ["sidecar", "healthcheck", "--ready"]
    assert VPN["args"] == ["up"]
    assert [c["name"] for c in POD["containers"]] == ["app"]


def test_vpn_security_context() -> None:
    sc = VPN["securityContext"]
    assert sc["runAsNonRoot"] is True and POD["securityContext"]["runAsNonRoot"] is True
    assert sc["capabilities"] == {"drop": ["ALL"], "add": ["NET_ADMIN", "NET_RAW"]}
    # file capabilities need no_new_privs off
    assert sc["allowPrivilegeEscalation"] is True
    assert "privileged" not in sc
    uid = [args for word, args in INSTR if word == "USER"][-1].split(":")[0]
    assert str(sc.get("runAsUser", POD["securityContext"].get("runAsUser"))) == uid
    app_sc = POD["containers"][0]["securityContext"]
    assert app_sc["allowPrivilegeEscalation"] is False and app_sc["capabilities"]["drop"] == ["ALL"]


def test_tun_device_and_secret_mounts() -> None:
    volumes = {v["name"]: v for v in POD["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in VPN["volumeMounts"]}
    tun = volumes[mounts["/dev/net/tun"]]
    assert tun["hostPath"] == {"path": "/dev/net/tun", "type": "CharDevice"}
    env = {e["name"]: e["value"] for e in VPN["env"]}
    assert "PPTP_PASSWORD" not in env
    secret_dir = os.path.dirname(env["PPTP_PASSWORD_FILE"])
    secret_volume = volumes[mounts[secret_dir]]
    assert secret_volume["secret"]["secretName"] == SECRET["metadata"]["name"]
    keys = set(SECRET["stringData"])
    assert (
        os.path.basename(env["PPTP_PASSWORD_FILE"]) in keys
        and os.path.basename(env["PPTP_USER_FILE"]) in keys
    )


def test_vpn_environment_is_a_valid_configuration(tmp_path: Path) -> None:
    env = {e["name"]: e["value"] for e in VPN["env"]}
    for key, value in SECRET["stringData"].items():
        (tmp_path / key).write_text(value)
    local = {k: v.replace("/run/secrets/pptp", str(tmp_path)) for k, v in env.items()}
    settings = build_up_settings({}, local)
    # cluster DNS, pod and service CIDRs stay reachable next to the kill switch
    assert settings.kill_switch is True and len(settings.allow_subnets) >= 2
    assert settings.routes != "default"  # split tunnel: cluster traffic stays on the pod network
    assert settings.dns is False
    assert settings.user == SECRET["stringData"]["username"]


def test_documented_alternatives_present() -> None:
    text = (K8S / "deployment.yaml").read_text()
    assert "device plugin" in text
    assert shlex.split("sidecar healthcheck --ready") == VPN["startupProbe"]["exec"]["command"]
