"""Any OpenAI-compatible server: capacity is configured, health is ``GET /v1/models``.

Such servers expose no KV metrics, so the policy runs on its own token accounting alone.
"""

from __future__ import annotations

from thunder_middleware.sidecar.backends.base import Backend, BackendMetrics, BackendUnavailable


class OpenAICompatBackend(Backend):
    kind = "openai"

    async def probe(self, timeout: float = 2.0) -> None:
        response = await self._get("/v1/models", timeout)
        if response.status_code != 200:
            raise BackendUnavailable(f"{self.url}/v1/models: HTTP {response.status_code}")

    async def scrape(self, timeout: float = 2.0) -> BackendMetrics:
        if not self.configured_capacity:
            raise BackendUnavailable(f"{self.url}: generic backend needs --backend-capacity")
        await self.probe(timeout)
        self.metrics = BackendMetrics(capacity_tokens=self.configured_capacity)
        return self.metrics
