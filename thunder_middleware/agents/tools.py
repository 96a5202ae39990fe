"""Coding tools that run in the program's environment through the sidecar's exec route.

The agent process never touches its own filesystem: a shell command, a file read or a file
write is a command in the environment the sidecar prepared for the program (a container, or
a working directory with the local provider). Arguments reach the shell as positional
parameters (``sh -c script sh arg...``), never spliced into the script, so a model's odd
paths or contents cannot break out of the command.
"""

from __future__ import annotations

from langchain_core.tools import BaseTool, StructuredTool

from thunder_middleware.integrations.client import (
    AsyncThunderClient,
    ThunderClient,
    format_exec_result,
)

WRITE_SCRIPT = 'mkdir -p "$(dirname -- "$1")" && printf "%s" "$2" > "$1" && echo "wrote $1"'

__all__ = ["coding_tools", "read_command", "shell_command", "write_command"]


def shell_command(command: str) -> list[str]:
    return ["sh", "-c", command]


def read_command(path: str) -> list[str]:
    return ["cat", "--", path]


def write_command(path: str, content: str) -> list[str]:
    return ["sh", "-c", WRITE_SCRIPT, "sh", path, content]


def coding_tools(program_id: str, client: ThunderClient, async_client: AsyncThunderClient, *,
                 timeout_s: float = 60.0) -> list[BaseTool]:
    """``run_shell``, ``read_file`` and ``write_file`` bound to one program's environment."""

    def run(command: list[str]) -> str:
        return format_exec_result(client.exec(program_id, command, timeout_s=timeout_s))

    async def arun(command: list[str]) -> str:
        result = await async_client.exec(program_id, command, timeout_s=timeout_s)
        return format_exec_result(result)

    def run_shell(command: str) -> str:
        return run(shell_command(command))

    async def arun_shell(command: str) -> str:
        return await arun(shell_command(command))

    def read_file(path: str) -> str:
        return run(read_command(path))

    async def aread_file(path: str) -> str:
        return await arun(read_command(path))

    def write_file(path: str, content: str) -> str:
        return run(write_command(path, content))

    async def awrite_file(path: str, content: str) -> str:
        return await arun(write_command(path, content))

    return [
        StructuredTool.from_function(
            run_shell, coroutine=arun_shell, name="run_shell",
            description="Run a shell command in the task's environment; returns exit code "
                        "and output."),
        StructuredTool.from_function(
            read_file, coroutine=aread_file, name="read_file",
            description="Read a text file from the task's environment."),
        StructuredTool.from_function(
            write_file, coroutine=awrite_file, name="write_file",
            description="Write content to a file in the task's environment (creates "
                        "parent directories)."),
    ]
