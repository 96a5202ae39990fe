"""Creating one environment on its provider, riding out engine hiccups.

Apart from the manager so that the retry policy (which errors, how often, how long between)
reads in one place.
"""

from __future__ import annotations

from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt, wait_exponential

from thunder_middleware.tools.errors import TransientProviderError
from thunder_middleware.tools.providers.base import EnvironmentProvider, Instance, Placement


async def create_with_retries(provider: EnvironmentProvider, placement: Placement,
                              attempts: int) -> Instance:
    """Create the environment, retrying engine hiccups (connection resets, 5xx) with backoff;
    spec errors are not retried: they would fail the same way again."""
    async for attempt in AsyncRetrying(
        retry=retry_if_exception_type(TransientProviderError),
        stop=stop_after_attempt(attempts),
        wait=wait_exponential(multiplier=0.2, max=2.0),
        reraise=True,
    ):
        with attempt:
            return await provider.create(placement)
    raise AssertionError("unreachable: tenacity re-raises the last error")
