"""The ecosystem configs in integrations/ parse and name metrics the sidecar really exports."""

from __future__ import annotations

import json
import re
from pathlib import Path

import httpx
import yaml

from tests.integrations.conftest import MODEL, Stack

ROOT = Path(__file__).resolve().parents[2] / "integrations"
METRIC = re.compile(r"\bthunder_[a-z_]+\b")


def exported_names(stack: Stack) -> set[str]:
    """Every series name the sidecar exports after one call (some gauges need traffic)."""
    httpx.post(stack.openai_base + "/chat/completions", timeout=30, json={
        "model": MODEL, "max_tokens": 8, "messages": [{"role": "user", "content": "warm up"}]})
    text = httpx.get(stack.url + "/metrics", timeout=10).text
    names: set[str] = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, family, kind = line.split()[:4]
            names.add(family)
            if kind == "histogram":
                names.update(family + suffix for suffix in ("_bucket", "_sum", "_count"))
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    return names


def test_dashboard_queries_only_metrics_the_sidecar_exports(stack: Stack) -> None:
    dashboard = json.loads((ROOT / "grafana" / "thunder-dashboard.json").read_text())
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    wanted = {m for expr in exprs for m in METRIC.findall(expr)}
    assert any(name.startswith("thunder_sidecar_") for name in wanted)
    exported = exported_names(stack)
    missing = sorted(name for name in wanted if name not in exported)
    assert not missing, f"dashboard names metrics the sidecar does not export: {missing}"


def test_prometheus_scrapes_the_sidecar_and_the_replicas() -> None:
    config = yaml.safe_load((ROOT / "prometheus" / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert jobs["thunder-sidecar"]["metrics_path"] == "/metrics"
    assert jobs["thunder-sidecar"]["static_configs"][0]["targets"] == ["sidecar:9000"]
    assert len(jobs["vllm"]["static_configs"][0]["targets"]) == 2


def test_compose_starts_replicas_on_gpus_and_the_sidecar_in_front() -> None:
    compose = yaml.safe_load((ROOT / "compose" / "docker-compose.yml").read_text())
    services = compose["services"]
    replicas = [name for name in services if name.startswith("vllm-")]
    assert len(replicas) == 2
    for name in replicas:
        devices = services[name]["deploy"]["resources"]["reservations"]["devices"]
        assert devices[0]["capabilities"] == ["gpu"]
    command = services["sidecar"]["command"]
    backends = [command[i + 1] for i, arg in enumerate(command) if arg == "--backend"]
    # the sidecar is on the host network: it reaches each replica on its loopback port
    published = [services[name]["ports"][0].split(":") for name in replicas]
    assert all(host == "127.0.0.1" and inner == "8000" for host, _, inner in published)
    assert backends == [f"http://127.0.0.1:{port}" for _, port, _ in published]


def test_compose_sidecar_shares_the_hosts_network_pids_and_name() -> None:
    """--env-provider docker inside a container: tool containers publish on the host's
    127.0.0.1 (readiness probes, endpoints), and instance ids (host:pid:start) must stay
    meaningful when the sidecar container is recreated, or its orphans are never reaped."""
    compose = yaml.safe_load((ROOT / "compose" / "docker-compose.yml").read_text())
    sidecar = compose["services"]["sidecar"]
    command = sidecar["command"]
    assert command[command.index("--env-provider") + 1] == "docker"
    assert sidecar["network_mode"] == "host"
    assert sidecar["pid"] == "host"
    assert sidecar["uts"] == "host"  # a stable hostname: the host's own
    assert "ports" not in sidecar  # meaningless on the host network
    assert "/var/run/docker.sock:/var/run/docker.sock" in sidecar["volumes"]
    assert sidecar["environment"]["DOCKER_HOST"] == "unix:///var/run/docker.sock"
    # 0.0.0.0 without keys is refused at start-up: keys are required, not optional
    assert command[command.index("--host") + 1] == "0.0.0.0"
    assert sidecar["environment"]["THUNDER_API_KEYS"].startswith("${THUNDER_API_KEYS:?")
    # Prometheus (bridge network) still finds its sidecar:9000 target on the host
    assert "sidecar:host-gateway" in compose["services"]["prometheus"]["extra_hosts"]


def test_litellm_config_loads_the_callback_module_next_to_it() -> None:
    config = yaml.safe_load((ROOT / "litellm" / "config.yaml").read_text())
    callbacks = config["litellm_settings"]["callbacks"]
    module, _, attribute = callbacks[0].rpartition(".")
    source = (ROOT / "litellm" / f"{module}.py").read_text()
    assert re.search(rf"^{attribute} = ", source, re.MULTILINE)
