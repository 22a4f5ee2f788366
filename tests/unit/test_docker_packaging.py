"""docker-compose.yml and services/Dockerfile agree with the code they package.

These read the files (tests/integration/test_compose.py builds and runs them in a real
Docker engine): every ENCODERS_* variable set in compose is a setting of that service, every
address a service connects to is one another service binds, every image runs an existing
command and installs extras that exist, only the images that need torch carry it, and every
service has a health check that asks it.
"""

from __future__ import annotations

import dataclasses
import re
import tomllib
from pathlib import Path

import pytest
import yaml

from encoders.cli import cli
from encoders.services.encoder.config import EncoderConfig
from encoders.services.ingest.config import IngestConfig
from encoders.services.metrics.config import MetricsConfig
from encoders.services.pisim.config import PisimConfig
from encoders.services.recorder.config import RecorderConfig
from encoders.services.viewer.config import ViewerConfig
from encoders.shared.health import SERVICES as HEALTH_SERVICES
from encoders.shared.runtime import RUNTIME_VARIABLES
from encoders.shared.settings import env_name

ROOT = Path(__file__).resolve().parents[2]
SERVICES = {  # compose service -> (settings class, CLI command)
    "ingest": (IngestConfig, "ingest"),
    "encoder": (EncoderConfig, "encode"),
    "metrics": (MetricsConfig, "metrics"),
    "recorder": (RecorderConfig, "record"),
    "viewer": (ViewerConfig, "view"),
    "web": (ViewerConfig, "view"),
    "pisim": (PisimConfig, "pisim"),
}
HEALTH = {"web": "viewer"}  # the service `encoders health` asks, where its name is not the compose service's
WITH_TORCH = {"encoder", "viewer", "web"}  # the encoder, and the viewer's search by text
# Read by shared/runtime.py, not settings fields.
COMMON_VARS = RUNTIME_VARIABLES


def load(name: str) -> dict:
    return yaml.safe_load((ROOT / name).read_text())


@pytest.fixture(scope="module")
def compose() -> dict:
    return load("docker-compose.yml")


def env_of(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    # ${VAR:-default} -> default: what a plain `docker compose up` uses.
    return {k: re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", str(v)) for k, v in env.items()}


def dockerfile() -> str:
    return (ROOT / "services" / "Dockerfile").read_text()


def build_args(service: dict) -> dict[str, str]:
    args = service["build"].get("args") or {}
    return {k: re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", str(v)) for k, v in args.items()}


def extras() -> dict[str, list[str]]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]


def requirements(extra_names: list[str]) -> set[str]:
    """Every requirement the extras pull in, following encoders[...] references."""
    out: set[str] = set()
    todo = list(extra_names)
    while todo:
        for req in extras()[todo.pop()]:
            nested = re.fullmatch(r"encoders\[([^\]]+)\]", req)
            if nested:
                todo.extend(nested.group(1).split(","))
            else:
                out.add(re.split(r"[<>=\[ ;]", req, maxsplit=1)[0].lower())
    return out


def test_every_service_is_built_from_the_one_skeleton_and_runs_its_command(compose):
    text = dockerfile()
    assert re.search(r"^ARG BASE_IMAGE=python:3.11-slim-bookworm$", text, re.M)
    assert re.search(r"^FROM \$\{BASE_IMAGE\}$", text, re.M)
    # Builds with the classic builder too (Compose v1; no registry for a frontend image).
    assert not re.search(r"^# syntax=|^RUN --mount", text, re.M)
    assert "python3 -m venv /opt/venv" in text and "PATH=/opt/venv/bin:$PATH" in text
    for name, (_, command) in SERVICES.items():
        service = compose["services"][name]
        assert service["build"]["dockerfile"] == "services/Dockerfile", name
        assert service["command"] == ["encoders", command], name
        assert command in cli.commands
        assert build_args(service)["BASE_IMAGE"] == "python:3.11-slim-bookworm", name
    assert compose["services"]["postgres"]["image"] == "${POSTGRES_IMAGE:-pgvector/pgvector:pg16}"


def test_images_install_only_their_extras_and_only_those_that_need_torch_carry_it(compose):
    assert 'pip install ".[${EXTRAS}]"' in dockerfile()
    assert 'if [ -n "$TORCH" ]; then pip install $TORCH' in dockerfile()
    for name in SERVICES:
        args = build_args(compose["services"][name])
        wanted = args["EXTRAS"].split(",")
        assert set(wanted) <= set(extras()), f"{name}: unknown extra in {wanted}"
        assert ("torch" in requirements(wanted)) == (name in WITH_TORCH), name
        assert bool(args.get("TORCH")) == (name in WITH_TORCH), name
    images: dict[str, dict] = {}  # one tag, one build: services that share an image build it the same way
    for name, service in compose["services"].items():
        if "build" in service:
            assert images.setdefault(service["image"], service["build"]) == service["build"], name


def test_every_service_has_a_health_check_that_asks_it_and_waits_for_what_it_joins(compose):
    services = compose["services"]
    for name in SERVICES:
        check = services[name]["healthcheck"]["test"]
        assert check == ["CMD", "encoders", "health", HEALTH.get(name, name)], name
        assert HEALTH.get(name, name) in HEALTH_SERVICES
        joins = services[name].get("depends_on", {})
        if name not in ("metrics", "pisim"):
            assert joins["metrics"]["condition"] == "service_healthy", name
    for name in ("recorder", "web"):
        assert services[name]["depends_on"]["postgres"]["condition"] == "service_healthy", name


def test_compose_sets_only_real_settings(compose):
    for name, (cls, _) in SERVICES.items():
        known = {env_name(f) for f in dataclasses.fields(cls)} | COMMON_VARS
        ours = {k for k in env_of(compose["services"][name]) if k.startswith("ENCODERS_")}
        assert ours <= known, f"{name} sets {sorted(ours - known)}, not settings of {cls.__name__}"


def test_every_service_joins_the_core_at_one_address(compose):
    """docs/PROTOCOL.md: every service connects to the core (metrics' session socket), and to
    nothing else; the core binds its sockets on every interface."""
    services = compose["services"]
    core = env_of(services["metrics"])
    assert core["ENCODERS_CORE_BIND"] == "tcp://*:5556"
    assert core["ENCODERS_FRAMES_BIND"] == "tcp://*:5555" and core["ENCODERS_METRICS_BIND"] == "tcp://*:5558"
    for name in ("ingest", "encoder", "recorder", "viewer", "web"):
        env = env_of(services[name])
        assert env["ENCODERS_CORE"] == "tcp://metrics:5556", name
        others = [v for k, v in env.items() if k != "ENCODERS_CORE" and "tcp://" in v]
        assert not others, f"{name} names another address: {others}"
    pisim = re.fullmatch(r"http://pisim:(\d+)/stream.mjpg", env_of(services["ingest"])["ENCODERS_STREAM"])
    assert pisim and pisim.group(1) == env_of(services["pisim"])["ENCODERS_PORT"]


def test_every_link_to_the_core_is_keyed_with_keys_made_once(compose):
    """Issue #13: the core binds every interface, so every service holds keys, read-only, from
    a volume that a one-shot service fills on the first start (and keeps after)."""
    services = compose["services"]
    maker = services["keys"]
    assert "encoders keys init /keys --if-missing" in " ".join(maker["command"])
    assert "keys:/keys" in maker["volumes"]
    gpus = load("docker-compose.gpus.yml")["services"]
    keyed = {name: services[name] for name in ("ingest", "encoder", "metrics", "recorder", "viewer", "web")}
    keyed |= {name: svc for name, svc in gpus.items() if name.startswith("encoder-gpu")}
    for name, svc in keyed.items():
        assert env_of(svc)["ENCODERS_KEYS"] == "/keys", name
        assert "keys:/keys:ro" in svc["volumes"], name
        assert svc["depends_on"]["keys"]["condition"] == "service_completed_successfully", name
    assert "keys" in compose["volumes"]


def test_compose_wiring_the_brief_asks_for(compose):
    s = compose["services"]
    assert env_of(s["ingest"])["ENCODERS_STREAM"] == "http://pisim:8000/stream.mjpg"
    assert "${ENCODERS_STREAM:-" in (ROOT / "docker-compose.yml").read_text()  # a real Pi: one variable
    assert env_of(s["ingest"])["ENCODERS_STREAM_ID"] == "cam0"
    assert "profiles" not in s["pisim"] and s["viewer"]["profiles"] == ["viewer"]
    published = {p.split(":")[0] for svc in s.values() for p in svc.get("ports", [])}
    assert {"5555", "5556", "5558"} <= published
    assert "deploy" not in s["encoder"]  # the GPU is docker-compose.gpu.yml's (make up adds it when there is one)
    gpu = load("docker-compose.gpu.yml")["services"]["encoder"]
    device = gpu["deploy"]["resources"]["reservations"]["devices"][0]
    assert device["driver"] == "nvidia" and device["count"] == 1 and device["capabilities"] == ["gpu"]
    assert any(v.endswith(":/home/encoders/.cache") for v in s["encoder"]["volumes"])
    assert "pg_isready" in " ".join(s["postgres"]["healthcheck"]["test"])
    assert s["recorder"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert "@postgres:5432/" in env_of(s["recorder"])["ENCODERS_DATABASE_URL"]
    assert "/tmp/.X11-unix:/tmp/.X11-unix:ro" in s["viewer"]["volumes"] and "DISPLAY" in s["viewer"]["environment"]
    web = env_of(s["web"])
    assert web["ENCODERS_WEB"] == "0.0.0.0:8080"
    assert s["web"]["environment"]["ENCODERS_WEB_TOKEN"].startswith("${ENCODERS_WEB_TOKEN:?")  # make up makes one
    assert "@postgres:5432/" in web["ENCODERS_DATABASE_URL"] and "runs:/runs:ro" in s["web"]["volumes"]
    assert "${ENCODERS_WEB_PORT:-8080}:8080" in s["web"]["ports"] and "profiles" not in s["web"]
    named = {v.split(":")[0] for svc in s.values() for v in svc.get("volumes", []) if not v.startswith("/")}
    assert named <= set(compose["volumes"])


def test_gpu_override_pins_one_encoder_per_device():
    gpus = load("docker-compose.gpus.yml")["services"]
    assert gpus["encoder"]["deploy"]["replicas"] == 0
    for name, svc in gpus.items():
        if name.startswith("encoder-gpu"):
            assert svc["command"] == ["encoders", "encode"] and svc["image"] == "encoders/encoder"
    pinned = sorted(
        svc["deploy"]["resources"]["reservations"]["devices"][0]["device_ids"][0]
        for name, svc in gpus.items()
        if name.startswith("encoder-gpu")
    )
    assert pinned == ["0", "1"]
    for name, svc in gpus.items():
        if name.startswith("encoder-gpu"):
            assert set(env_of(svc)) <= {env_name(f) for f in dataclasses.fields(EncoderConfig)} | COMMON_VARS


def test_dockerignore_keeps_local_state_out_of_images():
    ignored = set((ROOT / ".dockerignore").read_text().split())
    assert {".git", ".venv", "runs", ".pytest_cache", "**/__pycache__"} <= ignored
