"""The stdout/stderr pipes of one local command, with a single owner for every descriptor.

Why not ``loop.connect_read_pipe(os.fdopen(fd))``: under uvloop (the sidecar's loop) closing such
a transport closes the descriptor twice, once in libuv and once through the file object, and
between the two another thread (``shutil.rmtree`` in a worker, the SQLite store) may have been
handed the same number, so its descriptor is closed underneath it. That is how reclaims failed
with EBADF and left directories behind. Here the pipes are read with ``add_reader`` and
``os.read``, which never take ownership, and ``close`` closes each descriptor exactly once after
the loop has stopped watching it, whatever point a cancellation hit.
"""

from __future__ import annotations

import asyncio
import contextlib
import os

from thunder_middleware.tools.providers.base import OutputBuffer

_CHUNK = 65536


class _PipeReader:
    """Feeds one non-blocking pipe into ``sink`` from the loop's reader callback until EOF."""

    def __init__(self, loop: asyncio.AbstractEventLoop, fd: int, sink: OutputBuffer) -> None:
        self._loop = loop
        self._fd = fd
        self._sink = sink
        self.finished: asyncio.Future[None] = loop.create_future()
        os.set_blocking(fd, False)
        loop.add_reader(fd, self._readable)

    def _readable(self) -> None:
        try:
            chunk = os.read(self._fd, _CHUNK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            chunk = b""  # the pipe broke: as good as EOF
        if chunk:
            self._sink.feed(chunk)
        else:
            self.stop()

    def stop(self) -> None:
        """Stop watching the pipe (idempotent); only then may its descriptor be closed."""
        if not self.finished.done():
            self._loop.remove_reader(self._fd)
            self.finished.set_result(None)


class CommandPipes:
    """Two pipes for a child's stdout and stderr; the parent keeps and reads the read ends.

    Use as ``with CommandPipes(...) as pipes``: leaving the block, by return, error or
    cancellation, stops the readers and closes every descriptor still open, once.
    """

    def __init__(self, stdout: OutputBuffer, stderr: OutputBuffer) -> None:
        self._sinks = (stdout, stderr)
        self._open: set[int] = set()
        self._readers: list[_PipeReader] = []
        self.stdout_read, self.stdout_write = self._pipe()
        self.stderr_read, self.stderr_write = self._pipe()

    def _pipe(self) -> tuple[int, int]:
        read_end, write_end = os.pipe()
        self._open.update((read_end, write_end))
        return read_end, write_end

    def close_fd(self, fd: int) -> None:
        """Close one of our descriptors unless it is closed already."""
        if fd in self._open:
            self._open.discard(fd)
            os.close(fd)

    def child_started(self) -> None:
        """The child holds the write ends now: drop ours (so EOF can come) and start reading."""
        self.close_fd(self.stdout_write)
        self.close_fd(self.stderr_write)
        loop = asyncio.get_running_loop()
        self._readers = [_PipeReader(loop, self.stdout_read, self._sinks[0]),
                         _PipeReader(loop, self.stderr_read, self._sinks[1])]

    async def drained(self, grace_s: float) -> None:
        """Wait up to ``grace_s`` for EOF on both pipes (background children may hold them)."""
        if self._readers:
            await asyncio.wait([reader.finished for reader in self._readers], timeout=grace_s)

    def close(self) -> None:
        for reader in self._readers:
            reader.stop()
        for fd in list(self._open):
            with contextlib.suppress(OSError):
                self.close_fd(fd)

    def __enter__(self) -> CommandPipes:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()
