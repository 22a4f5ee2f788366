"""The Kubernetes manifests (deploy/kubernetes, issue #25), tested by rendering, without a cluster.

Each overlay (and the base) is rendered as `kubectl apply -k` would render it (`kubectl kustomize`),
from a copy of deploy/kubernetes whose Secrets are made as the README tells a user to make them
(make-secrets.sh, which runs `encoders keys init`). Every document is then checked against the
Kubernetes API's own schemas (kubernetes-validate, strict: an unknown or misspelt field is an
error) and against what a schema cannot see: that the names, labels, selectors, ports and Secrets
the objects give each other line up (a Service selects pods, a probe's port exists, a pod's
/keys holds its role's key and the core's public key, the NetworkPolicy lets the pipeline in...).
The last test breaks rendered objects on purpose and expects each check to say so.

Nothing here talks to a cluster: what a real one would do (images pulled, volumes bound, the
pods healthy) is not tested (README: Running on Kubernetes).
"""

from __future__ import annotations

import base64
import copy
import functools
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import kubernetes_validate
import pytest
import yaml
import zmq.auth

from encoders.shared.keys import CLIENT_ROLES

ROOT = Path(__file__).resolve().parents[2]
KUBE = ROOT / "deploy" / "kubernetes"
NAMESPACE = "encoders"
# The Kubernetes API versions the manifests are validated against: the oldest one claimed, and a
# recent one (kubernetes-validate bundles the schemas of each).
K8S_VERSIONS = ("1.30.0", "1.34.0")
OVERLAYS = ("base", *sorted(f"overlays/{p.name}" for p in (KUBE / "overlays").iterdir() if p.is_dir()))
EXTERNAL_URL = "postgresql://encoders:secret@db.example.com:5432/encoders"
# Which key role each service's command runs as (shared/keys.py; the core is `core`).
ROLE_OF_COMMAND = {"metrics": "core", "encode": "worker", "ingest": "ingest", "record": "recorder", "view": "viewer"}
WORKLOADS = ("Deployment", "StatefulSet")

pytestmark = [pytest.mark.kubectl, pytest.mark.timeout(120)]

Doc = dict[str, Any]


def kubectl() -> str:
    path = shutil.which("kubectl")
    if path is None:
        pytest.fail(
            "kubectl not found: the Kubernetes manifests are rendered with `kubectl kustomize` (install kubectl)"
        )
    return path


def copy_without_secrets(target: Path) -> Path:
    """deploy/kubernetes as committed: whatever a user made in secrets/ stays out of the test."""

    def ignore(folder: str, names: list[str]) -> list[str]:
        if Path(folder).resolve() == (KUBE / "secrets").resolve():
            return [n for n in names if n not in ("kustomization.yaml", ".gitignore")]
        return []

    shutil.copytree(KUBE, target, ignore=ignore)
    return target


@pytest.fixture(scope="module")
def render(tmp_path_factory) -> Iterator[Callable[..., list[Doc]]]:
    """render(overlay): its documents, rendered once, with Secrets made by make-secrets.sh."""
    tool = kubectl()
    done: dict[str, list[Doc]] = {}

    def rendered(overlay: str, files: dict[str, str] | None = None, database_url: str = "") -> list[Doc]:
        """``files``: more files for the tree (a user's own overlay), by their path in it; ``database_url``:
        make-secrets.sh --database-url (external-db's is EXTERNAL_URL)."""
        if overlay not in done:
            tree = copy_without_secrets(tmp_path_factory.mktemp("kube") / "kubernetes")
            for path, text in (files or {}).items():
                (tree / path).parent.mkdir(parents=True, exist_ok=True)
                (tree / path).write_text(text)
            # The project's own `encoders` (this interpreter's), as make-secrets.sh runs it for a user.
            env = {**os.environ, "ENCODERS": str(Path(sys.executable).parent / "encoders")}
            args = ["sh", str(tree / "make-secrets.sh")]
            if database_url or overlay.endswith("external-db"):
                args += ["--database-url", database_url or EXTERNAL_URL]
            made = subprocess.run(args, env=env, capture_output=True, text=True, timeout=60, check=False)
            assert made.returncode == 0, f"make-secrets.sh exited {made.returncode}:\n{made.stdout}\n{made.stderr}"
            out = subprocess.run(
                [tool, "kustomize", str(tree / overlay)], capture_output=True, text=True, timeout=60, check=False
            )
            assert out.returncode == 0, f"kubectl kustomize {overlay} exited {out.returncode}:\n{out.stderr}"
            done[overlay] = [d for d in yaml.safe_load_all(out.stdout) if d]
        return copy.deepcopy(done[overlay])

    yield rendered


@pytest.fixture(scope="module", autouse=True)
def schemas_read_once() -> Iterator[None]:
    """kubernetes-validate reads and parses its schema files (megabytes) at every call: read once here,
    the checks take a second instead of half a minute."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(
            kubernetes_validate.utils, "schema_contents", functools.cache(kubernetes_validate.utils.schema_contents)
        )
        yield


# ---------------------------------------------------------------------------------------
# The checks: each returns its findings, in words; none is a pass.


def schema_problems(docs: list[Doc], version: str) -> list[str]:
    problems = []
    for doc in docs:
        what = f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            problems.append(f"{what}: {exc.message}")
        except kubernetes_validate.SchemaNotFoundError as exc:
            problems.append(f"{what}: {exc.message}")
    return problems


def selects(selector: Doc | None, labels: dict[str, str]) -> bool:
    """A label selector (matchLabels / matchExpressions, or a Service's plain map) against labels."""
    if not selector:
        return False  # an empty selector selects everything: never meant here
    if "matchLabels" not in selector and "matchExpressions" not in selector:
        selector = {"matchLabels": selector}
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], expr.get("values", [])
        if (
            (op == "In" and labels.get(key) not in values)
            or (op == "NotIn" and labels.get(key) in values)
            or (op == "Exists" and key not in labels)
            or (op == "DoesNotExist" and key in labels)
        ):
            return False
    return True


def name(doc: Doc) -> str:
    return str(doc["metadata"]["name"])


def pods(docs: list[Doc]) -> list[tuple[Doc, Doc]]:
    """(workload, its pod template) for each Deployment and StatefulSet."""
    return [(d, d["spec"]["template"]) for d in docs if d["kind"] in WORKLOADS]


def labels_of(template: Doc) -> dict[str, str]:
    return dict(template.get("metadata", {}).get("labels") or {})


def container_ports(template: Doc) -> dict[str | int, int]:
    """Each container port by its name and its number."""
    ports: dict[str | int, int] = {}
    for c in template["spec"]["containers"]:
        for p in c.get("ports") or []:
            ports[p["containerPort"]] = p["containerPort"]
            if "name" in p:
                ports[p["name"]] = p["containerPort"]
    return ports


def env_of(container: Doc, by_name: dict[tuple[str, str], Doc]) -> dict[str, str]:
    """A container's environment as it will be: its ConfigMaps' (envFrom), then env (which wins); values
    from Secrets decoded."""
    env: dict[str, str] = {}
    for source in container.get("envFrom") or []:
        ref = source.get("configMapRef")
        if ref and ("ConfigMap", ref["name"]) in by_name:
            env.update(by_name["ConfigMap", ref["name"]].get("data") or {})
    for var in container.get("env") or []:
        if "value" in var:
            env[var["name"]] = str(var["value"])
        ref = (var.get("valueFrom") or {}).get("secretKeyRef")
        if ref and ("Secret", ref["name"]) in by_name:
            data = by_name["Secret", ref["name"]].get("data") or {}
            if ref["key"] in data:
                env[var["name"]] = base64.b64decode(data[ref["key"]]).decode()
    return env


def mounted_files(template: Doc, volume: str, by_name: dict[tuple[str, str], Doc]) -> dict[str, bytes]:
    """The files a Secret or projected volume shows in the pod: path -> contents."""
    spec = next(v for v in template["spec"].get("volumes") or [] if v["name"] == volume)
    sources = [{"secret": {"name": spec["secret"]["secretName"], **spec["secret"]}}] if "secret" in spec else []
    sources += (spec.get("projected") or {}).get("sources") or []
    files: dict[str, bytes] = {}
    for source in sources:
        ref = source.get("secret")
        if not ref or ("Secret", ref["name"]) not in by_name:
            continue
        data = {k: base64.b64decode(v) for k, v in (by_name["Secret", ref["name"]].get("data") or {}).items()}
        items = ref.get("items")
        for key, path in ((i["key"], i["path"]) for i in items) if items else ((k, k) for k in data):
            if key in data:
                files[path] = data[key]
    return files


def consistency_problems(docs: list[Doc]) -> list[str]:
    """What a schema cannot see: whether the objects' names, labels, ports and Secrets line up."""
    problems: list[str] = []
    by_name: dict[tuple[str, str], Doc] = {}
    for doc in docs:
        key = (doc["kind"], name(doc))
        if key in by_name:
            problems.append(f"{key[0]}/{key[1]} is rendered twice")
        by_name[key] = doc
        if doc["kind"] != "Namespace" and doc["metadata"].get("namespace") != NAMESPACE:
            problems.append(f"{key[0]}/{key[1]} is in namespace {doc['metadata'].get('namespace')!r}, not {NAMESPACE}")
    if ("Namespace", NAMESPACE) not in by_name:
        problems.append(f"no Namespace {NAMESPACE}")
    templates = pods(docs)
    services = {name(d): d for d in docs if d["kind"] == "Service"}

    for workload, template in templates:
        what = f"{workload['kind']}/{name(workload)}"
        labels = labels_of(template)
        if not selects(workload["spec"]["selector"], labels):
            problems.append(f"{what}: its selector does not select its own pod template's labels {labels}")
        for other, other_template in templates:
            if other is not workload and selects(workload["spec"]["selector"], labels_of(other_template)):
                problems.append(f"{what}: its selector also selects the pods of {other['kind']}/{name(other)}")
        if workload["kind"] == "StatefulSet" and workload["spec"].get("serviceName") not in services:
            problems.append(f"{what}: serviceName {workload['spec'].get('serviceName')!r} is no Service")
        ports = container_ports(template)
        mounts_ok = {v["name"] for v in template["spec"].get("volumes") or []}
        mounts_ok |= {c["metadata"]["name"] for c in workload["spec"].get("volumeClaimTemplates") or []}
        for c in template["spec"]["containers"]:
            cwhat = f"{what} container {c['name']}"
            for m in c.get("volumeMounts") or []:
                if m["name"] not in mounts_ok:
                    problems.append(f"{cwhat}: mounts {m['name']!r}, which is no volume of the pod")
            for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
                probe = c.get(kind)
                if probe is None:
                    problems.append(f"{cwhat}: no {kind}")
                    continue
                port = (probe.get("httpGet") or probe.get("tcpSocket") or {}).get("port")
                if port is not None and port not in ports:
                    problems.append(f"{cwhat}: its {kind} asks port {port!r}, which no container declares")
            requests = (c.get("resources") or {}).get("requests") or {}
            if not {"cpu", "memory"} <= set(requests):
                problems.append(f"{cwhat}: no cpu and memory requests")
            problems += secret_ref_problems(cwhat, c, by_name)
            command = c.get("command") or []
            if command[:1] == ["encoders"]:
                problems += service_problems(cwhat, c, template, by_name, services)
        for v in template["spec"].get("volumes") or []:
            for ref in [v.get("secret", {}).get("secretName")] + [
                s.get("secret", {}).get("name") for s in (v.get("projected") or {}).get("sources") or []
            ]:
                if ref is not None and ("Secret", ref) not in by_name:
                    problems.append(f"{what}: volume {v['name']} takes the Secret {ref}, which is not rendered")
            for s in (v.get("projected") or {}).get("sources") or []:
                ref = s.get("secret") or {}
                data = (by_name.get(("Secret", ref.get("name", ""))) or {}).get("data") or {}
                problems += [
                    f"{what}: volume {v['name']} takes key {i['key']} of Secret {ref['name']}, which it lacks"
                    for i in ref.get("items") or []
                    if data and i["key"] not in data
                ]

    for service in services.values():
        what = f"Service/{name(service)}"
        selected = [t for _, t in templates if selects(service["spec"].get("selector"), labels_of(t))]
        if not selected:
            problems.append(f"{what}: its selector {service['spec'].get('selector')} selects no pod template")
        for p in service["spec"]["ports"]:
            target = p.get("targetPort", p["port"])
            problems += [
                f"{what}: port {p['port']} goes to {target!r}, which a pod it selects does not declare"
                for t in selected
                if target not in container_ports(t)
            ]

    for policy in (d for d in docs if d["kind"] == "NetworkPolicy"):
        what = f"NetworkPolicy/{name(policy)}"
        guarded = [t for _, t in templates if selects(policy["spec"]["podSelector"], labels_of(t))]
        if not guarded:
            problems.append(f"{what}: its podSelector selects no pod template")
        for rule in policy["spec"].get("ingress") or []:
            for peer in rule.get("from") or []:
                if peer.get("podSelector") == CAMERAS and not any(
                    labels_of(t).get("app.kubernetes.io/name") == "ingest" for _, t in templates
                ):
                    continue  # the workers' rule for the cameras' ingests, where none is rendered yet (the base)
                if "podSelector" in peer and not any(selects(peer["podSelector"], labels_of(t)) for _, t in templates):
                    problems.append(f"{what}: a rule lets in pods {peer['podSelector']}, and there are none")
            problems += [
                f"{what}: a rule opens port {p['port']}, which the pods it guards do not declare"
                for p in rule.get("ports") or []
                for t in guarded
                if p["port"] not in container_ports(t)
            ]
    return problems


CAMERAS = {"matchLabels": {"encoders.io/data-client": "true"}}  # the cameras' ingests, in the workers' NetworkPolicy


def lets_in(policy: Doc, labels: dict[str, str], port: int | None) -> bool:
    """Whether a NetworkPolicy's ingress rules let a pod of this namespace with these labels reach this port."""
    for rule in policy["spec"].get("ingress") or []:
        peers = rule.get("from")
        ports = rule.get("ports")
        if (not peers or any(selects(p.get("podSelector"), labels) for p in peers)) and (
            not ports or any(p.get("port") == port for p in ports)
        ):
            return True
    return False


def secret_ref_problems(what: str, container: Doc, by_name: dict[tuple[str, str], Doc]) -> list[str]:
    problems = []
    for var in container.get("env") or []:
        ref = (var.get("valueFrom") or {}).get("secretKeyRef")
        if ref is None:
            continue
        secret = by_name.get(("Secret", ref["name"]))
        if secret is None:
            problems.append(f"{what}: {var['name']} comes from the Secret {ref['name']}, which is not rendered")
        elif ref["key"] not in (secret.get("data") or {}):
            problems.append(
                f"{what}: {var['name']} comes from key {ref['key']} of Secret {ref['name']}, which lacks it"
            )
    for source in container.get("envFrom") or []:
        ref = source.get("configMapRef") or source.get("secretRef")
        kind = "ConfigMap" if "configMapRef" in source else "Secret"
        if ref and (kind, ref["name"]) not in by_name:
            problems.append(f"{what}: its environment comes from the {kind} {ref['name']}, which is not rendered")
    return problems


def service_problems(
    what: str, container: Doc, template: Doc, by_name: dict[tuple[str, str], Doc], services: dict[str, Doc]
) -> list[str]:
    """One of the pipeline's services: its addresses, keys and metrics as the services read them."""
    problems = []
    env = env_of(container, by_name)
    # Every address given by a Service's name reaches a Service with that port, which goes to a pod.
    for var, value in env.items():
        parts = urlsplit(value) if "://" in value and not var.endswith("_BIND") else None
        if parts is None or not parts.hostname or "." in parts.hostname or parts.hostname == "localhost":
            continue
        service = services.get(parts.hostname)
        if service is None:
            problems.append(f"{what}: {var} names {parts.hostname}, which is no Service")
        elif parts.port not in {p["port"] for p in service["spec"]["ports"]}:
            problems.append(f"{what}: {var} asks port {parts.port} of Service {parts.hostname}, which has no such port")
        else:  # and no NetworkPolicy of the pods behind it keeps this pod out
            target = next(p.get("targetPort", p["port"]) for p in service["spec"]["ports"] if p["port"] == parts.port)
            for _, server in pods(list(by_name.values())):
                if not selects(service["spec"]["selector"], labels_of(server)):
                    continue
                number = container_ports(server).get(target)
                for policy in (d for d in by_name.values() if d["kind"] == "NetworkPolicy"):
                    if selects(policy["spec"]["podSelector"], labels_of(server)) and not lets_in(
                        policy, labels_of(template), number
                    ):
                        problems.append(f"{what}: NetworkPolicy/{name(policy)} keeps it from {var} ({value})")
    # /metrics and /healthz on the port the annotations and the probes name, on every interface.
    annotations = template.get("metadata", {}).get("annotations") or {}
    if annotations.get("prometheus.io/scrape") == "true":
        port = annotations.get("prometheus.io/port")
        if env.get("ENCODERS_PROMETHEUS_PORT") != port:
            problems.append(
                f"{what}: prometheus.io/port {port} but ENCODERS_PROMETHEUS_PORT {env.get('ENCODERS_PROMETHEUS_PORT')}"
            )
        if env.get("ENCODERS_PROMETHEUS_HOST") != "0.0.0.0":
            problems.append(f"{what}: its metrics listen on {env.get('ENCODERS_PROMETHEUS_HOST')}, not every interface")
        ports = container_ports(template)
        for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
            get: Doc = (container.get(kind) or {}).get("httpGet") or {}
            if get and (get.get("path") != "/healthz" or str(ports.get(get.get("port", ""), "")) != port):
                problems.append(
                    f"{what}: its {kind} asks {get.get('path')} on {get.get('port')}, not /healthz on {port}"
                )
    # The keys: the core's public key and this role's secret key, and no other role's secret.
    role = ROLE_OF_COMMAND.get(container["command"][1]) if len(container["command"]) > 1 else None
    if role is None:  # pisim: no keys, it serves its stream only
        return problems
    if env.get("ENCODERS_KEYS") != "/keys":
        return [*problems, f"{what}: ENCODERS_KEYS is {env.get('ENCODERS_KEYS')!r}, not /keys"]
    mount = next((m for m in container.get("volumeMounts") or [] if m["mountPath"] == "/keys"), None)
    if mount is None:
        return [*problems, f"{what}: nothing is mounted at /keys"]
    files = mounted_files(template, mount["name"], by_name)
    wanted = {"core.key", f"{role}.key_secret"}
    if role == "core":
        wanted |= {f"allowed/{r}.key" for r in CLIENT_ROLES}
    if missing := sorted(wanted - set(files)):
        problems.append(f"{what} ({role}): /keys lacks {', '.join(missing)}")
    extra = {f for f in files if f.endswith(".key_secret")} - {f"{role}.key_secret"}
    if role != "core" and extra:
        problems.append(f"{what} ({role}): /keys holds other roles' secret keys too: {sorted(extra)}")
    return problems


def key_pair_problems(docs: list[Doc], folder: Path) -> list[str]:
    """The keys each pod holds belong together: every pod's core.key is the core's own public key,
    and the core's allowed/<role>.key is the public half of the key the pods of that role hold."""
    by_name = {(d["kind"], name(d)): d for d in docs}
    public: dict[str, set[bytes]] = {}
    core_public: set[bytes] = set()
    allowed: dict[str, bytes] = {}

    def key(data: bytes, file: str) -> bytes:
        path = folder / file.replace("/", "_")
        path.write_bytes(data)
        return zmq.auth.load_certificate(path)[0]

    for _, template in pods(docs):
        for c in template["spec"]["containers"]:
            command = c.get("command") or []
            role = ROLE_OF_COMMAND.get(command[1]) if command[:1] == ["encoders"] and len(command) > 1 else None
            mount = next((m for m in c.get("volumeMounts") or [] if m["mountPath"] == "/keys"), None)
            if role is None or mount is None:
                continue
            files = mounted_files(template, mount["name"], by_name)
            if f"{role}.key_secret" in files:
                public.setdefault(role, set()).add(key(files[f"{role}.key_secret"], f"{role}.key_secret"))
            if role == "core":
                allowed = {f: key(v, f) for f, v in files.items() if f.startswith("allowed/")}
            elif "core.key" in files:
                core_public.add(key(files["core.key"], "core.key"))
    problems = []
    if core_public - public.get("core", set()):
        problems.append("a pod's core.key is not the public key of the core's key pair")
    for role, keys in public.items():
        if role != "core" and keys != {allowed.get(f"allowed/{role}.key")}:
            problems.append(f"the {role} pods' key is not the one the core allows as {role}")
    return problems


# ---------------------------------------------------------------------------------------


def test_every_overlay_is_tested() -> None:
    assert {"overlays/dev", "overlays/gpu", "overlays/external-db"} <= set(OVERLAYS)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_renders_to_valid_kubernetes_objects(render, overlay) -> None:
    docs = render(overlay)
    for version in K8S_VERSIONS:
        assert schema_problems(docs, version) == [], f"{overlay} against Kubernetes {version}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_names_labels_selectors_ports_and_secrets_line_up(render, overlay, tmp_path) -> None:
    docs = render(overlay)
    assert consistency_problems(docs) == []
    assert key_pair_problems(docs, tmp_path) == []


def kinds(docs: list[Doc]) -> set[tuple[str, str]]:
    """Each object's kind and name; a generated one's without the hash of its contents."""
    return {(d["kind"], name(d).rsplit("-", 1)[0] if d["kind"] in ("Secret", "ConfigMap") else name(d)) for d in docs}


def test_the_base(render) -> None:
    """The core as a StatefulSet with its state volume and one Service for its three ports; the
    recorder with PostgreSQL; workers; the web viewer; a NetworkPolicy that lets only the pipeline in."""
    docs = render("base")
    by = {(d["kind"], name(d)): d for d in docs}
    assert {("StatefulSet", "core"), ("Service", "core"), ("Deployment", "encoder"), ("StatefulSet", "recorder")} <= (
        set(by)
    )
    assert {("StatefulSet", "postgres"), ("Service", "postgres"), ("Deployment", "web"), ("Service", "web")} <= set(by)
    core = by["StatefulSet", "core"]
    assert [c["metadata"]["name"] for c in core["spec"]["volumeClaimTemplates"]] == ["state"]
    assert {p["port"] for p in by["Service", "core"]["spec"]["ports"]} == {5555, 5556, 5558}
    assert (
        by["StatefulSet", "postgres"]["spec"]["template"]["spec"]["containers"][0]["image"] == "pgvector/pgvector:pg16"
    )
    # Only the pods that hold a key reach the core's ports: not PostgreSQL, say.
    policy = by["NetworkPolicy", "core"]["spec"]
    peers = [peer["podSelector"] for rule in policy["ingress"] for peer in rule.get("from") or []]
    let_in = {name(w) for w, t in pods(docs) if any(selects(p, labels_of(t)) for p in peers)}
    assert let_in == {"encoder", "recorder", "web"}
    # The web viewer's token is the Secret's.
    web = by["Deployment", "web"]["spec"]["template"]["spec"]["containers"][0]
    token = next(v for v in web["env"] if v["name"] == "ENCODERS_WEB_TOKEN")
    assert token["valueFrom"]["secretKeyRef"]["name"].startswith("encoders-web-")
    assert not any(d["kind"] == "Deployment" and name(d).startswith("ingest") for d in docs)  # cameras: overlays


def test_dev_runs_a_camera_on_the_simulated_pi(render) -> None:
    docs = render("overlays/dev")
    by = {(d["kind"], name(d)): d for d in docs}
    assert {("Deployment", "pisim"), ("Service", "pisim"), ("Deployment", "ingest-cam0")} <= set(by)
    camera = by["Deployment", "ingest-cam0"]["spec"]["template"]
    env = env_of(camera["spec"]["containers"][0], by)
    assert env["ENCODERS_STREAM"] == "http://pisim:8000/stream.mjpg"
    assert env["ENCODERS_STREAM_ID"] == "cam0"
    assert camera["metadata"]["labels"]["encoders.io/stream"] == "cam0"
    assert camera["metadata"]["labels"]["encoders.io/core-client"] == "true"


def test_only_the_cameras_ingests_reach_the_workers_data_port(render) -> None:
    """The data link: each camera's ingest sends its pictures to the workers' port 5560 itself
    (docs/PROTOCOL.md), so the workers' NetworkPolicy lets the ingests in there, and nobody else."""
    docs = render("overlays/dev")
    by = {(d["kind"], name(d)): d for d in docs}
    policy = by["NetworkPolicy", "encoder"]
    encoder = by["Deployment", "encoder"]["spec"]["template"]["spec"]["containers"][0]
    assert 5560 in {p["containerPort"] for p in encoder["ports"]}
    let_in = {name(w) for w, t in pods(docs) if lets_in(policy, labels_of(t), 5560)}
    assert let_in == {"ingest-cam0"}
    assert lets_in(policy, {}, 9580)  # its Prometheus port, open as the core's


def test_gpu_gives_each_worker_a_gpu(render) -> None:
    docs = render("overlays/gpu")
    encoder = next(d for d in docs if (d["kind"], name(d)) == ("Deployment", "encoder"))
    spec = encoder["spec"]["template"]["spec"]
    assert spec["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert any(t["key"] == "nvidia.com/gpu" for t in spec["tolerations"])
    # Only the workers.
    others = [d for d, t in pods(docs) if d is not encoder]
    assert all("nvidia.com/gpu" not in str(t["spec"]) for d in others for t in [d["spec"]["template"]])
    # Nothing else changed: the same objects as the base's (but for the camera), the same Secrets.
    assert kinds(render("base")) - kinds(docs) == set()


def test_external_db_uses_the_url_from_the_secret(render) -> None:
    docs = render("overlays/external-db")
    by = {(d["kind"], name(d)): d for d in docs}
    assert not [k for k in by if k[1] == "postgres"]
    for kind, who in (("StatefulSet", "recorder"), ("Deployment", "web")):
        container = by[kind, who]["spec"]["template"]["spec"]["containers"][0]
        assert env_of(container, by)["ENCODERS_DATABASE_URL"] == EXTERNAL_URL


def test_a_users_overlay_combines_the_components(render) -> None:
    """As the README suggests: one's own overlay with both components and two cameras."""
    mine = """
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
namespace: encoders
resources: [../../base, ../../cameras/pi, ../../cameras/door]
components: [../../components/gpu, ../../components/external-db]
images:
  - { name: encoders/encoder, newName: registry.example.com/encoders/encoder, newTag: "0.1.0" }
"""
    door = (KUBE / "cameras" / "pi" / "kustomization.yaml").read_text()
    for old, new in (
        ("-pi ", "-door "),
        ("stream: pi ", "stream: door "),
        ("raspberrypi.local", "door.local"),
        ("=pi ", "=door "),
    ):
        assert old in door
        door = door.replace(old, new)
    files = {"overlays/mine/kustomization.yaml": mine, "cameras/door/kustomization.yaml": door}
    docs = render("overlays/mine", files, database_url=EXTERNAL_URL)
    assert schema_problems(docs, K8S_VERSIONS[0]) == []
    assert consistency_problems(docs) == []
    by = {(d["kind"], name(d)): d for d in docs}
    assert {("Deployment", "ingest-pi"), ("Deployment", "ingest-door")} <= set(by)
    assert not [k for k in by if k[1] == "postgres"]
    encoder = by["Deployment", "encoder"]["spec"]["template"]["spec"]["containers"][0]
    assert encoder["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert encoder["image"] == "registry.example.com/encoders/encoder:0.1.0"
    camera = by["Deployment", "ingest-door"]["spec"]["template"]["spec"]["containers"][0]
    assert env_of(camera, by)["ENCODERS_STREAM"] == "http://door.local:8000/stream.mjpg"
    assert env_of(camera, by)["ENCODERS_STREAM_ID"] == "door"


def test_no_secret_is_committed() -> None:
    """The keys and passwords make-secrets.sh writes are ignored by git, whatever their name."""
    ignored = (KUBE / "secrets" / ".gitignore").read_text().split()
    assert ignored[ignored.index("*") :] == ["*", "!.gitignore", "!kustomization.yaml"]


def test_the_checks_catch_mistakes(render, tmp_path) -> None:
    """Each check finds a mistake put there on purpose: a test that cannot fail proves nothing."""
    good = render("overlays/dev")

    def broken(change: Callable[[Callable[[str, str], Doc]], object]) -> list[Doc]:
        """A copy of the render, changed by ``change(pod)``: pod(kind, name) is that workload's pod template."""
        docs = copy.deepcopy(good)
        by = {(d["kind"], name(d)): d for d in docs}
        change(lambda kind, who: by[kind, who]["spec"]["template"])
        return docs

    def core(pod: Callable[[str, str], Doc]) -> Doc:
        return pod("StatefulSet", "core")["spec"]["containers"][0]

    def secret(prefix: str) -> str:
        """The rendered name (with kustomize's hash) of the Secret made as ``prefix``."""
        return next(name(d) for d in good if d["kind"] == "Secret" and name(d).startswith(f"{prefix}-"))

    def keys_volume(pod: Callable[[str, str], Doc], kind: str, who: str) -> Doc:
        return next(v for v in pod(kind, who)["spec"]["volumes"] if v["name"] == "keys")

    # A misspelt field, a wrong type: the schemas.
    typo = broken(lambda pod: core(pod).update(volumeMount=core(pod).pop("volumeMounts")))
    assert schema_problems(typo, K8S_VERSIONS[0])
    wrong_type = broken(lambda pod: core(pod)["ports"][0].update(containerPort="many"))
    assert schema_problems(wrong_type, K8S_VERSIONS[0])

    # What the schemas cannot see.
    def service_selects_nothing(pod: Callable[[str, str], Doc]) -> None:
        pod("Deployment", "web")["metadata"]["labels"]["app.kubernetes.io/name"] = "webb"

    def probe_on_no_port(pod: Callable[[str, str], Doc]) -> None:
        core(pod)["livenessProbe"]["httpGet"]["port"] = "metrics"

    def secret_not_rendered(pod: Callable[[str, str], Doc]) -> None:
        keys_volume(pod, "Deployment", "encoder")["secret"]["secretName"] = "encoders-keys-worker"

    def another_roles_key(pod: Callable[[str, str], Doc]) -> None:
        keys_volume(pod, "Deployment", "web")["secret"]["secretName"] = secret("encoders-keys-worker")

    def core_without_allow_list(pod: Callable[[str, str], Doc]) -> None:
        keys_volume(pod, "StatefulSet", "core")["projected"]["sources"].pop(1)

    def camera_kept_out(pod: Callable[[str, str], Doc]) -> None:
        del pod("Deployment", "ingest-cam0")["metadata"]["labels"]["encoders.io/core-client"]

    def database_kept_out(pod: Callable[[str, str], Doc]) -> None:
        del pod("StatefulSet", "recorder")["metadata"]["labels"]["encoders.io/database-client"]

    def address_no_service(pod: Callable[[str, str], Doc]) -> None:
        env = pod("Deployment", "encoder")["spec"]["containers"][0]["env"]
        next(v for v in env if v["name"] == "ENCODERS_CORE")["value"] = "tcp://metrics:5556"

    def metrics_elsewhere(pod: Callable[[str, str], Doc]) -> None:
        pod("Deployment", "encoder")["metadata"]["annotations"]["prometheus.io/port"] = "9581"

    def two_select_one(pod: Callable[[str, str], Doc]) -> None:
        pod("Deployment", "pisim")["metadata"]["labels"].update(
            {"app.kubernetes.io/name": "ingest", "encoders.io/stream": "cam0"}
        )

    for change in (
        service_selects_nothing,
        probe_on_no_port,
        secret_not_rendered,
        another_roles_key,
        core_without_allow_list,
        camera_kept_out,
        database_kept_out,
        address_no_service,
        metrics_elsewhere,
        two_select_one,
    ):
        assert consistency_problems(broken(change)), f"not caught: {change.__name__}"

    # Keys that do not belong together: the workers given the recorder's key as theirs.
    def swapped(pod: Callable[[str, str], Doc]) -> None:
        keys_volume(pod, "Deployment", "encoder")["secret"].update(
            secretName=secret("encoders-keys-recorder"),
            items=[
                {"key": "core.key", "path": "core.key"},
                {"key": "recorder.key_secret", "path": "worker.key_secret"},
            ],
        )

    assert key_pair_problems(broken(swapped), tmp_path) == [
        "the worker pods' key is not the one the core allows as worker"
    ]
    # And the untouched render passes them all.
    assert consistency_problems(good) == []
