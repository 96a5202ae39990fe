"""The environment manager's knobs as sidecar settings: flags, THUNDER_* variables and TOML
reach ManagerConfig and the provider; bad values stop start-up with a clear error."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from thunder_middleware.sidecar.app import create_app
from thunder_middleware.sidecar.environments import manager_config
from thunder_middleware.sidecar.settings import SidecarSettings, load_settings
from thunder_middleware.tools import LocalProvider, ManagerConfig

BACKEND = "http://127.0.0.1:9"


def test_environment_settings_reach_the_manager_config(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("THUNDER_ENV_ROOT", str(tmp_path / "envs"))
    settings = load_settings(None, backends=[BACKEND], max_environments=3,
                             env_create_concurrency=2, env_create_attempts=5,
                             env_port_range="21000-21099", env_idle_timeout=30.0,
                             env_ready_timeout=45.0, env_exec_timeout=20.0,
                             env_max_exec_timeout=120.0, env_output_limit=4096)
    expected = ManagerConfig(max_live=3, prepare_concurrency=2, create_attempts=5,
                             port_range=(21000, 21099), idle_timeout_s=30.0,
                             ready_wait_timeout_s=45.0, default_exec_timeout_s=20.0,
                             max_exec_timeout_s=120.0, output_limit=4096)
    assert manager_config(settings) == expected
    manager = create_app(settings).state.environment_link.manager  # what the app really uses
    assert manager.config == expected
    # defaults are the manager's own; 0 s of idle timeout means never
    assert manager_config(SidecarSettings(backends=[BACKEND])) == ManagerConfig()
    never = SidecarSettings(backends=[BACKEND], env_idle_timeout=0)
    assert manager_config(never).idle_timeout_s is None


def test_port_range_from_the_environment_and_toml(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("THUNDER_ENV_PORT_RANGE", "22000-22999")
    monkeypatch.setenv("THUNDER_MAX_ENVIRONMENTS", "7")
    settings = load_settings(None, backends=[BACKEND])
    assert (settings.env_port_range, settings.max_environments) == ((22000, 22999), 7)
    monkeypatch.delenv("THUNDER_ENV_PORT_RANGE")
    config = tmp_path / "sidecar.toml"
    config.write_text('env_port_range = [23000, 23010]\nk8s_namespace = "agents"\n')
    settings = load_settings(config, backends=[BACKEND])
    assert (settings.env_port_range, settings.k8s_namespace) == ((23000, 23010), "agents")


def test_k8s_namespace_reaches_the_provider(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    import thunder_middleware.tools as tools

    made: list[tuple[str, dict[str, Any]]] = []

    def fake_make_provider(name: str, **options: Any) -> LocalProvider:
        made.append((name, options))
        return LocalProvider(tmp_path)

    monkeypatch.setattr(tools, "make_provider", fake_make_provider)
    create_app(load_settings(None, backends=[BACKEND], env_provider="kubernetes",
                             k8s_namespace="agents"))
    create_app(load_settings(None, backends=[BACKEND], env_provider="local",
                             k8s_namespace="agents"))
    assert made == [("kubernetes", {"namespace": "agents"}), ("local", {})]


def _serve(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "thunder_middleware", "serve", "--backend", BACKEND,
         "--port", "9", *args],
        capture_output=True, text=True, timeout=60, env={**os.environ, **(env or {})})


def test_bad_environment_flags_are_a_clear_startup_error() -> None:
    result = _serve("--max-environments", "0", "--env-create-concurrency", "0",
                    "--env-port-range", "30000-20000", "--k8s-namespace", "Bad_NS",
                    "--env-output-limit", "10")
    assert result.returncode == 2, result.stderr
    for field in ("max_environments", "env_create_concurrency", "env_port_range",
                  "k8s_namespace", "env_output_limit"):
        assert field in result.stderr, (field, result.stderr)
    assert "invalid settings" in result.stderr and "Traceback" not in result.stderr

    result = _serve("--env-exec-timeout", "100", "--env-max-exec-timeout", "10",
                    env={"THUNDER_ENV_PORT_RANGE": "lots"})
    assert result.returncode == 2, result.stderr
    assert "env_port_range must look like 20000-29999" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    result = _serve("--env-exec-timeout", "100", "--env-max-exec-timeout", "10")
    assert result.returncode == 2, result.stderr
    assert "env_exec_timeout must not exceed env_max_exec_timeout" in result.stderr
    assert "Traceback" not in result.stderr


def test_an_unreachable_container_engine_is_a_clear_startup_error(tmp_path: Path) -> None:
    result = _serve("--env-provider", "docker",
                    env={"DOCKER_HOST": f"unix://{tmp_path}/no-engine.sock"})
    assert result.returncode == 2, result.stderr
    assert "--env-provider docker: cannot reach it" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
