"""Checks against a real vLLM server (the CPU build, a tiny model): `make vllm-check`."""
