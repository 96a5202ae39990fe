"""Read a twin's ``/metrics`` the way Prometheus would (prometheus_client's own parser)."""

from __future__ import annotations

import time
from collections.abc import Callable

import httpx
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample


def scrape(url: str) -> dict[str, list[Sample]]:
    """Samples by sample name (``vllm:prompt_tokens_total``, ``..._bucket``, ...)."""
    response = httpx.get(url + "/metrics", timeout=30)
    response.raise_for_status()
    samples: dict[str, list[Sample]] = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append(sample)
    return samples


def value(url: str, name: str) -> float:
    (sample,) = scrape(url)[name]
    return float(sample.value)


def wait_until(check: Callable[[], bool], timeout: float = 20.0, interval: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(interval)
    return check()
