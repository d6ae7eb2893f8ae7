"""Stopping the processes tests and benchmarks start (servers, relays, namespaces, viewers)."""

from __future__ import annotations

import asyncio
import contextlib


async def stop_process(process: asyncio.subprocess.Process, timeout: float = 10.0) -> int:
    """SIGTERM, as a service manager sends, then SIGKILL if it has not exited within
    ``timeout`` seconds; waits either way and returns the exit code (idempotent)."""
    if process.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            process.terminate()
        try:
            await asyncio.wait_for(process.wait(), timeout)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()
    assert process.returncode is not None
    return process.returncode
