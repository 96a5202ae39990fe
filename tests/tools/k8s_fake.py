"""A recorded fake of the ``CoreV1Api`` calls the Kubernetes provider makes (no cluster in CI).

It answers with the client's own API objects (``V1Pod``, ``V1PodList``, ``ApiException``) in the
shapes a real API server returns: pods start ``Pending`` and turn ``Running`` with a pod IP and a
node after a few reads; an image that cannot be pulled shows ``ErrImagePull`` in the container's
waiting state; missing pods are 404s. Exec sessions run the command as a local process, which
stands in for the container's process behind the WebSocket (same surface as ``WSClient``).
"""

from __future__ import annotations

import copy
import json
import subprocess
import time
from typing import Any

from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException


class RecordedCoreV1Api:
    def __init__(self, reads_until_running: int = 2, fail_creates: int = 0) -> None:
        self.calls: list[tuple[str, str]] = []
        self.pods: dict[str, k8s.V1Pod] = {}
        self.manifests: dict[str, dict[str, Any]] = {}
        self._reads: dict[str, int] = {}
        self.reads_until_running = reads_until_running
        self.fail_creates = fail_creates

    def create_namespaced_pod(self, namespace: str, body: k8s.V1Pod) -> k8s.V1Pod:
        self.calls.append(("create_namespaced_pod", body.metadata.name))
        if self.fail_creates > 0:
            self.fail_creates -= 1
            raise ApiException(status=503, reason="Service Unavailable")
        # What goes over the wire: fails if the object is not a valid API object.
        self.manifests[body.metadata.name] = k8s.ApiClient().sanitize_for_serialization(body)
        pod = copy.deepcopy(body)
        pod.status = k8s.V1PodStatus(phase="Pending")
        self.pods[body.metadata.name] = pod
        return pod

    def read_namespaced_pod(self, name: str, namespace: str) -> k8s.V1Pod:
        self.calls.append(("read_namespaced_pod", name))
        pod = self.pods.get(name)
        if pod is None:
            raise ApiException(status=404, reason="Not Found")
        self._reads[name] = self._reads.get(name, 0) + 1
        image = pod.spec.containers[0].image
        if image.startswith("missing/"):
            waiting = k8s.V1ContainerStateWaiting(reason="ErrImagePull",
                                                  message=f"pull access denied for {image}")
            pod.status.container_statuses = [k8s.V1ContainerStatus(
                name="env", image=image, image_id="", ready=False, restart_count=0,
                state=k8s.V1ContainerState(waiting=waiting))]
        elif self._reads[name] >= self.reads_until_running and pod.status.phase == "Pending":
            pod.status.phase = "Running"
            pod.status.pod_ip = f"10.1.0.{len(self.pods)}"
            pod.spec.node_name = "node-a"
        return pod

    def delete_namespaced_pod(self, name: str, namespace: str,
                              grace_period_seconds: int | None = None) -> k8s.V1Status:
        self.calls.append(("delete_namespaced_pod", name))
        if self.pods.pop(name, None) is None:
            raise ApiException(status=404, reason="Not Found")
        return k8s.V1Status(status="Success")

    def list_namespaced_pod(self, namespace: str, label_selector: str = "") -> k8s.V1PodList:
        self.calls.append(("list_namespaced_pod", label_selector))
        wanted = dict(term.split("=", 1) for term in label_selector.split(",") if term)
        items = [pod for pod in self.pods.values()
                 if all(pod.metadata.labels.get(key) == value for key, value in wanted.items())]
        return k8s.V1PodList(items=items)

    def connect_get_node_proxy_with_path(self, name: str, path: str) -> str:
        self.calls.append(("connect_get_node_proxy_with_path", f"{name}/{path}"))
        return json.dumps({"node": {"nodeName": name}, "pods": [
            {"podRef": {"name": pod_name, "namespace": "default"},
             "ephemeral-storage": {"usedBytes": 4096 * (index + 1)}}
            for index, pod_name in enumerate(self.pods)]})

    def connect_get_namespaced_pod_exec(self, *args: Any, **kwargs: Any) -> None:
        raise AssertionError("called only through the stream API")


class LocalExecSession:
    """``WSClient``'s surface (is_open, update, peek/read stdout/stderr, returncode, close)."""

    def __init__(self, command: list[str]) -> None:
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, text=True)
        self._out = self._err = ""
        self._done = False

    def is_open(self) -> bool:
        """Like the WebSocket: open until update() has seen the end and buffered all output."""
        return not self._done

    def update(self, timeout: float = 0) -> None:
        time.sleep(min(timeout, 0.05))
        if self.process.poll() is not None and not self._done:
            self._out, self._err = self.process.communicate()
            self._done = True

    def peek_stdout(self) -> bool:
        return bool(self._out)

    def read_stdout(self) -> str:
        out, self._out = self._out, ""
        return out

    def peek_stderr(self) -> bool:
        return bool(self._err)

    def read_stderr(self) -> str:
        err, self._err = self._err, ""
        return err

    @property
    def returncode(self) -> int | None:
        return self.process.returncode

    def close(self) -> None:
        self.process.kill()
        self.process.wait()
        self._done = True


class RecordedStream:
    """Stands in for ``kubernetes.stream.stream``; records what would go over the WebSocket."""

    def __init__(self) -> None:
        self.commands: list[list[str]] = []

    def __call__(self, method: Any, name: str, namespace: str, *, command: list[str],
                 **kwargs: Any) -> LocalExecSession:
        assert method.__name__ == "connect_get_namespaced_pod_exec"
        assert kwargs["_preload_content"] is False and kwargs["tty"] is False
        self.commands.append(command)
        return LocalExecSession(command)
