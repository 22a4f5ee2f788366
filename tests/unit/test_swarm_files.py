"""The swarm stack file and the GPU box's compose file, read as Docker reads them (issue #25): what each
service is given, without a Docker engine. tests/integration/test_swarm.py runs them for real."""

from __future__ import annotations

from pathlib import Path

import yaml

from encoders.shared import keys
from encoders.shared.settings import SessionSettings

ROOT = Path(__file__).resolve().parents[2]
STACK = yaml.safe_load((ROOT / "deploy" / "swarm" / "stack.yml").read_text())
BOX = yaml.safe_load((ROOT / "deploy" / "compose" / "worker-box.yml").read_text())
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
ROLES = {"ingest": "ingest", "encoder": "worker", "recorder": "recorder", "web": "viewer"}
IPVS_IDLE_S = 900  # a swarm VIP's idle TCP timeout (moby#31208)


def secret_files(service: dict) -> dict[str, str]:
    """target file -> secret, for one service's secrets (each under /run/secrets/<target>)."""
    return {s["target"]: s["source"] for s in service.get("secrets", [])}


def test_each_service_gets_only_its_roles_keys():
    services = STACK["services"]
    for name, role in ROLES.items():
        assert services[name]["environment"]["ENCODERS_KEYS"] == "/run/secrets/encoders"
        assert set(secret_files(services[name])) == {"encoders/core.key", f"encoders/{role}.key_secret"}, name
    core = secret_files(services["metrics"])
    allowed = {f"encoders/allowed/{role}.key" for role in keys.CLIENT_ROLES}
    assert set(core) == {"encoders/core.key", "encoders/core.key_secret", *allowed}
    assert services["metrics"]["environment"]["ENCODERS_KEYS"] == "/run/secrets/encoders"
    for name in ("pisim", "postgres"):
        assert "secrets" not in services[name]
    for service in services.values():  # readable by the services' user (uid 1000) only
        assert all(s["uid"] == "1000" and s["mode"] == 0o400 for s in service.get("secrets", []))


def test_every_secret_is_a_file_keys_init_makes(tmp_path):
    made = {p.relative_to(tmp_path).as_posix() for p in keys.init(tmp_path)}
    for name, secret in STACK["secrets"].items():
        assert secret["file"].split("}/", 1)[1] in made, name
    used = {s["source"] for service in STACK["services"].values() for s in service.get("secrets", [])}
    assert used == set(STACK["secrets"])


def test_the_network_is_encrypted_and_no_service_sits_behind_a_virtual_ip():
    assert STACK["networks"]["encoders"] == {"driver": "overlay", "driver_opts": {"encrypted": "true"}}
    for name, service in STACK["services"].items():
        assert service["networks"] == ["encoders"], name
        assert service["deploy"]["endpoint_mode"] == "dnsrr", name
        # dnsrr services publish in host mode only (the routing mesh needs a VIP).
        assert all(p["mode"] == "host" for p in service.get("ports", [])), name


def test_the_sessions_heartbeats_are_far_under_the_vip_idle_timeout():
    settings = SessionSettings()
    assert settings.heartbeat_s * settings.heartbeat_misses < IPVS_IDLE_S / 100


def test_state_is_placed_by_node_labels_and_workers_go_anywhere():
    services = STACK["services"]
    placed = {name: services[name]["deploy"].get("placement", {}).get("constraints", []) for name in services}
    assert placed["metrics"] == ["node.labels.encoders.core == true"]
    for name in ("postgres", "recorder", "web"):
        assert placed[name] == ["node.labels.encoders.db == true"], name
    assert placed["encoder"] == []
    volumes = {name: [v.split(":")[0] for v in services[name].get("volumes", [])] for name in services}
    assert "metrics-state" in volumes["metrics"] and "pgdata" in volumes["postgres"] and "runs" in volumes["recorder"]


def test_health_checks_are_compose_s():
    for name, service in STACK["services"].items():
        assert service["healthcheck"]["test"] == COMPOSE["services"][name]["healthcheck"]["test"], name


def test_the_gpu_box_runs_a_worker_only_with_the_core_s_address_and_a_worker_key():
    assert list(BOX["services"]) == ["encoder"]
    encoder = BOX["services"]["encoder"]
    env = encoder["environment"]
    assert env["ENCODERS_CORE"].startswith("${ENCODERS_CORE:?") and env["ENCODERS_KEYS"] == "/keys"
    assert any(v.startswith("${ENCODERS_KEYS_DIR:?") and v.endswith(":/keys:ro") for v in encoder["volumes"])
    assert encoder["command"] == COMPOSE["services"]["encoder"]["command"]
    assert encoder["image"] == "${ENCODERS_IMAGE_PREFIX:-}" + COMPOSE["services"]["encoder"]["image"]


def test_gpu_workers_reserve_one_gpu_each_with_a_worker_key():
    gpu = yaml.safe_load((ROOT / "deploy" / "swarm" / "stack.gpu.yml").read_text())["services"]["encoder-gpu"]
    reserved = gpu["deploy"]["resources"]["reservations"]["generic_resources"]
    assert reserved == [{"discrete_resource_spec": {"kind": "NVIDIA-GPU", "value": 1}}]
    assert set(secret_files(gpu)) == {"encoders/core.key", "encoders/worker.key_secret"}
    assert gpu["environment"]["ENCODERS_DEVICE"] == "cuda" and gpu["deploy"]["endpoint_mode"] == "dnsrr"
    assert {s["source"] for s in gpu["secrets"]} <= set(STACK["secrets"])  # defined by stack.yml, deployed with it
