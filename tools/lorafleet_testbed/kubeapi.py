"""A minimal Kubernetes REST client for the test bed's kubelet stand-in: the handful of calls a
kubelet makes (list its pods, patch their status, read Secrets and ConfigMaps for env, mint
service-account tokens), with client-certificate auth and JSON. The standard library only, so
it runs in any interpreter, and every connection goes through :func:`netns.check_destination`."""

from __future__ import annotations

import http.client
import json
import ssl
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lorafleet_testbed import netns


class ApiError(RuntimeError):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status


@dataclass(frozen=True)
class Credentials:
    """Where the API server is and how to authenticate to it (paths of PEM files)."""

    server: str
    ca_cert: Path
    client_cert: Path
    client_key: Path


class KubeAPI:
    def __init__(self, credentials: Credentials, *, timeout: float = 10.0) -> None:
        url = urllib.parse.urlsplit(credentials.server)
        if url.scheme != "https" or url.hostname is None:
            raise ValueError(f"expected an https:// API server URL, got {credentials.server!r}")
        self.host = url.hostname
        self.port = url.port or 443
        self.timeout = timeout
        self._ssl = ssl.create_default_context(cafile=str(credentials.ca_cert))
        self._ssl.load_cert_chain(str(credentials.client_cert), str(credentials.client_key))

    def request(
        self,
        method: str,
        path: str,
        body: object | None = None,
        *,
        content_type: str = "application/json",
        query: dict[str, str] | None = None,
    ) -> Any:
        """One call; the decoded JSON answer. :class:`ApiError` for a non-2xx status."""
        netns.check_destination(self.host)
        if query:
            path = f"{path}?{urllib.parse.urlencode(query)}"
        conn = http.client.HTTPSConnection(
            self.host, self.port, timeout=self.timeout, context=self._ssl
        )
        try:
            payload = None if body is None else json.dumps(body).encode()
            headers = {"Accept": "application/json"}
            if payload is not None:
                headers["Content-Type"] = content_type
            conn.request(method, path, body=payload, headers=headers)
            response = conn.getresponse()
            data = response.read()
        finally:
            conn.close()
        if not 200 <= response.status < 300:
            try:
                message = json.loads(data).get("message", "")
            except ValueError:
                message = data[:200].decode(errors="replace")
            raise ApiError(response.status, f"{method} {path}: {message}")
        return json.loads(data) if data else None

    # ------------------------------------------------------------------ kubelet calls
    def list_pods(self, label_selector: str, field_selector: str = "") -> list[dict[str, Any]]:
        query = {"labelSelector": label_selector}
        if field_selector:
            query["fieldSelector"] = field_selector
        items: list[dict[str, Any]] = self.request("GET", "/api/v1/pods", query=query)["items"]
        return items

    def get(self, namespace: str, plural: str, name: str) -> dict[str, Any]:
        obj: dict[str, Any] = self.request("GET", f"/api/v1/namespaces/{namespace}/{plural}/{name}")
        return obj

    def patch_pod_status(self, namespace: str, name: str, patch: dict[str, Any]) -> None:
        self.request(
            "PATCH",
            f"/api/v1/namespaces/{namespace}/pods/{name}/status",
            patch,
            content_type="application/strategic-merge-patch+json",
        )

    def service_account_token(
        self, namespace: str, service_account: str, pod: dict[str, Any], seconds: int
    ) -> str:
        """A token for ``service_account`` bound to ``pod`` (invalid once the pod is gone),
        as the kubelet mints for a projected service-account volume."""
        meta = pod["metadata"]
        answer = self.request(
            "POST",
            f"/api/v1/namespaces/{namespace}/serviceaccounts/{service_account}/token",
            {
                "apiVersion": "authentication.k8s.io/v1",
                "kind": "TokenRequest",
                "spec": {
                    "expirationSeconds": seconds,
                    "boundObjectRef": {
                        "apiVersion": "v1",
                        "kind": "Pod",
                        "name": meta["name"],
                        "uid": meta["uid"],
                    },
                },
            },
        )
        token: str = answer["status"]["token"]
        return token
