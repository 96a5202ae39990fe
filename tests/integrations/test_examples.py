"""Every example script and notebook runs against a demo stack (twin + sidecar)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from tests.integrations.conftest import Stack

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
NOTEBOOKS = sorted(EXAMPLES.glob("*.ipynb"))


def example_env(stack: Stack) -> dict[str, str]:
    return {**os.environ, "THUNDER_SIDECAR_URL": stack.url,
            "OPENAI_BASE_URL": stack.openai_base, "OPENAI_API_KEY": "EMPTY",
            "LITELLM_LOCAL_MODEL_COST_MAP": "True"}


def run_script(stack: Stack, *args: str) -> str:
    done = subprocess.run([sys.executable, *args], cwd=EXAMPLES.parent, env=example_env(stack),
                          capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    # a user runs these first: nothing they print may be a warning to go and investigate
    assert "warn" not in (done.stdout + done.stderr).lower(), done.stderr[-4000:]
    return done.stdout


def test_langgraph_coding_agent_example(stack: Stack) -> None:
    out = run_script(stack, "examples/langgraph_coding_agent.py", "--agents", "2")
    lines = [line for line in out.splitlines() if line.startswith("coding-example-")]
    assert len(lines) == 2
    assert all("status terminated (released)" in line for line in lines)


def test_litellm_agent_loop_example_both_paths(stack: Stack) -> None:
    out = run_script(stack, "examples/litellm_agent_loop.py")
    lines = [line for line in out.splitlines() if line.startswith("litellm-")]
    assert [line.split("-")[1] for line in lines] == ["async", "sync"]
    for line in lines:
        calls = int(line.split(": ", 1)[1].split(" model calls")[0])
        assert calls >= 2
        assert f"sidecar saw {calls} steps" in line
        assert line.endswith("status terminated (released)")


def test_there_are_at_least_two_notebooks() -> None:
    assert len(NOTEBOOKS) >= 2


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs(stack: Stack, path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in example_env(stack).items():
        if name in {"THUNDER_SIDECAR_URL", "OPENAI_BASE_URL", "LITELLM_LOCAL_MODEL_COST_MAP"}:
            monkeypatch.setenv(name, value)  # the kernel inherits this process's environment
    notebook = nbformat.read(path, as_version=4)
    NotebookClient(notebook, timeout=180, kernel_name="python3",
                   resources={"metadata": {"path": str(EXAMPLES)}}).execute()
    errors = [output for cell in notebook.cells if cell.cell_type == "code"
              for output in cell.get("outputs", []) if output.get("output_type") == "error"]
    assert not errors
    streams = [output.get("text", "") for cell in notebook.cells if cell.cell_type == "code"
               for output in cell.get("outputs", []) if output.get("output_type") == "stream"]
    assert not [text for text in streams if "warn" in text.lower()], streams
