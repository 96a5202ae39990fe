"""LiteLLM proxy callback module: ``litellm_settings.callbacks: ["thunder_callbacks.handler"]``.

The proxy imports this file relative to its config and uses the object named ``handler``.
The sidecar's address comes from ``THUNDER_SIDECAR_URL`` (default http://127.0.0.1:9000);
``THUNDER_PROXY_PRESET`` (e.g. ``local-shell``) gives each program that tool environment.

``handler`` is an instance of ThunderProxyHook itself, on purpose: the proxy only runs
``async_pre_call_hook`` and ``async_post_call_streaming_iterator_hook`` for classes that
define them in their *own* body (litellm 1.110 checks the leaf class ``__dict__``), so a
subclass made here would have to define both again.
"""

from __future__ import annotations

import os

from thunder_middleware.integrations.litellm_proxy import ThunderProxyHook

handler = ThunderProxyHook(preset=os.environ.get("THUNDER_PROXY_PRESET") or None)
