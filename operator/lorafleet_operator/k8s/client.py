"""The operator's only Kubernetes client: get, server-side apply and status patches for the
kinds lorafleet reads and writes. 404 becomes ``None``; other API errors become
:class:`KubeApiError` with the server's message (never a credential)."""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import datetime
import json
from collections.abc import Awaitable, Callable
from typing import Any, Final, cast

import aiohttp
from kubernetes_asyncio import client, config
from kubernetes_asyncio.client.exceptions import ApiException

from lorafleet_api import names

JsonObj = dict[str, Any]

# What a request raises when the API server cannot be reached at all (restarting, network
# down) instead of answering: connection refused or reset, a timeout. Not KubeApiError: there
# is no answer to report. Loops that must outlive an outage catch these too.
TRANSPORT_ERRORS: Final = (aiohttp.ClientError, OSError, asyncio.TimeoutError)

_RAY = ("ray.io", "v1", "rayservices")


class KubeApiError(RuntimeError):
    """The API server refused a request; ``status`` is the HTTP code, ``message`` its reason."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status
        self.message = message


def _api_error(err: ApiException) -> KubeApiError:
    message = str(err.reason)
    try:
        body = json.loads(err.body) if err.body else {}
        message = body.get("message") or message
    except (TypeError, ValueError):
        pass
    return KubeApiError(int(err.status or 0), message)


class KubeClient:
    """Create with :meth:`connect`; close with :meth:`close`."""

    def __init__(self, api_client: client.ApiClient) -> None:
        self._api_client = api_client
        self._custom = client.CustomObjectsApi(api_client)
        self._core = client.CoreV1Api(api_client)
        self._rbac = client.RbacAuthorizationV1Api(api_client)

    @classmethod
    async def connect(cls, kubeconfig: str | None = None) -> KubeClient:
        """``kubeconfig`` (KUBECONFIG) when given; else the client library's rule, as the
        runtime does: ~/.kube/config when there is one, else the pod's service account."""
        configuration = client.Configuration()
        if kubeconfig:
            await config.load_kube_config(
                config_file=kubeconfig, client_configuration=configuration
            )
        else:
            await config.load_config(client_configuration=configuration)
        return cls(client.ApiClient(configuration))

    async def close(self) -> None:
        await self._api_client.close()

    # ------------------------------------------------------------------ generic verbs
    async def get(
        self, group: str, version: str, plural: str, namespace: str, name: str
    ) -> JsonObj | None:
        try:
            obj = await self._custom.get_namespaced_custom_object(
                group, version, namespace, plural, name
            )
        except ApiException as err:
            if err.status == 404:
                return None
            raise _api_error(err) from err
        return cast(JsonObj, obj)

    async def list(
        self,
        group: str,
        version: str,
        plural: str,
        namespace: str | None = None,
        label_selector: str | None = None,
    ) -> list[JsonObj]:
        kwargs: dict[str, Any] = {}
        if label_selector:
            kwargs["label_selector"] = label_selector
        try:
            if namespace is None:
                result = await self._custom.list_cluster_custom_object(
                    group, version, plural, **kwargs
                )
            else:
                result = await self._custom.list_namespaced_custom_object(
                    group, version, namespace, plural, **kwargs
                )
        except ApiException as err:
            if err.status == 404:  # the CRD is not installed
                return []
            raise _api_error(err) from err
        return cast(list[JsonObj], result.get("items", []))

    async def apply(self, obj: JsonObj) -> JsonObj:
        """Server-side apply with lorafleet's one field manager; we own our fields (force)."""
        group, _, version = obj["apiVersion"].rpartition("/")
        plural = _plural(obj["kind"])
        meta = obj["metadata"]
        try:
            result = await self._custom.patch_namespaced_custom_object(
                group,
                version,
                meta["namespace"],
                plural,
                meta["name"],
                obj,
                field_manager=names.FIELD_MANAGER,
                force=True,
                _content_type="application/apply-patch+yaml",
            )
        except ApiException as err:
            raise _api_error(err) from err
        return cast(JsonObj, result)

    async def patch_status(
        self,
        group: str,
        version: str,
        plural: str,
        namespace: str,
        name: str,
        status: JsonObj,
    ) -> JsonObj | None:
        """Merge-patch the status subresource; ``None`` if the object is gone."""
        try:
            result = await self._custom.patch_namespaced_custom_object_status(
                group,
                version,
                namespace,
                plural,
                name,
                {"status": status},
                _content_type="application/merge-patch+json",
            )
        except ApiException as err:
            if err.status == 404:
                return None
            raise _api_error(err) from err
        return cast(JsonObj, result)

    # ------------------------------------------------------------------ per kind
    async def get_rayservice(self, namespace: str, name: str) -> JsonObj | None:
        return await self.get(*_RAY, namespace, name)

    # ------------------------------------------------------------------ ConfigMaps
    async def list_configmaps(self, namespace: str, label_selector: str) -> builtins.list[JsonObj]:
        """ConfigMaps as plain dicts (``metadata``, ``data``), like custom objects."""
        try:
            result = await self._core.list_namespaced_config_map(
                namespace, label_selector=label_selector
            )
        except ApiException as err:
            raise _api_error(err) from err
        items = []
        for item in result.items:
            items.append(
                {
                    "metadata": self._api_client.sanitize_for_serialization(item.metadata),
                    "data": dict(item.data or {}),
                }
            )
        return items

    async def list_configmap_metadata(
        self, namespace: str, label_selector: str
    ) -> builtins.list[JsonObj]:
        """Only the metadata of matching ConfigMaps (PartialObjectMetadata): deciding which
        index shards to rewrite must not download megabytes of data it does not need."""
        try:
            response = await self._core.list_namespaced_config_map(
                namespace,
                label_selector=label_selector,
                _preload_content=False,
                _headers={
                    "Accept": "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1"
                },
            )
            body = json.loads(await response.read())
        except ApiException as err:
            raise _api_error(err) from err
        return [item.get("metadata", {}) for item in body.get("items", [])]

    async def apply_configmap(self, obj: JsonObj) -> None:
        """Server-side apply with lorafleet's field manager (force: we own these objects)."""
        await self._apply_typed(self._core.patch_namespaced_config_map, obj)

    async def delete_configmap(self, namespace: str, name: str) -> None:
        """Delete; already gone is fine."""
        try:
            await self._core.delete_namespaced_config_map(name, namespace)
        except ApiException as err:
            if err.status != 404:
                raise _api_error(err) from err

    # ------------------------------------------------------------------ runtime RBAC
    # The ServiceAccount, Role and RoleBinding of a LoRAModel's Ray pods. Server-side apply of
    # an object that does not exist yet is a create: the apply methods need both verbs.

    async def get_service_account(self, namespace: str, name: str) -> JsonObj | None:
        """Verbs: ``get`` serviceaccounts (core). ``None`` when it does not exist."""
        return await self._read(self._core.read_namespaced_service_account, namespace, name)

    async def apply_service_account(self, obj: JsonObj) -> None:
        """Verbs: ``create`` and ``patch`` serviceaccounts (core). Server-side apply with
        lorafleet's field manager (force: we own these objects)."""
        await self._apply_typed(self._core.patch_namespaced_service_account, obj)

    async def get_role(self, namespace: str, name: str) -> JsonObj | None:
        """Verbs: ``get`` roles (rbac.authorization.k8s.io). ``None`` when it does not exist."""
        return await self._read(self._rbac.read_namespaced_role, namespace, name)

    async def apply_role(self, obj: JsonObj) -> None:
        """Verbs: ``create`` and ``patch`` roles (rbac.authorization.k8s.io). Server-side apply
        with lorafleet's field manager. The API server refuses a Role that grants what the
        operator does not hold itself (no ``escalate`` verb is asked for)."""
        await self._apply_typed(self._rbac.patch_namespaced_role, obj)

    async def get_role_binding(self, namespace: str, name: str) -> JsonObj | None:
        """Verbs: ``get`` rolebindings (rbac.authorization.k8s.io). ``None`` when it does not
        exist."""
        return await self._read(self._rbac.read_namespaced_role_binding, namespace, name)

    async def apply_role_binding(self, obj: JsonObj) -> None:
        """Verbs: ``create`` and ``patch`` rolebindings (rbac.authorization.k8s.io). Server-side
        apply with lorafleet's field manager. The API server allows binding a Role only to a
        client that holds what it grants (no ``bind`` verb is asked for)."""
        await self._apply_typed(self._rbac.patch_namespaced_role_binding, obj)

    async def _read(
        self, read: Callable[..., Awaitable[Any]], namespace: str, name: str
    ) -> JsonObj | None:
        try:
            obj = await read(name, namespace)
        except ApiException as err:
            if err.status == 404:
                return None
            raise _api_error(err) from err
        return cast(JsonObj, self._api_client.sanitize_for_serialization(obj))

    async def _apply_typed(self, patch: Callable[..., Awaitable[Any]], obj: JsonObj) -> None:
        meta = obj["metadata"]
        try:
            await patch(
                meta["name"],
                meta["namespace"],
                obj,
                field_manager=names.FIELD_MANAGER,
                force=True,
                _content_type="application/apply-patch+yaml",
            )
        except ApiException as err:
            raise _api_error(err) from err

    # ------------------------------------------------------------------ Events
    async def post_event(
        self,
        involved: JsonObj,
        *,
        event_type: str,
        reason: str,
        message: str,
        now: datetime.datetime,
    ) -> None:
        """A core/v1 Event about ``involved``. Failures are swallowed: an Event is a courtesy
        and must never fail the work it describes.

        Used where kopf's own posting cannot be (tasks outside a kopf handler have no event
        queue: kopf raises LookupError there)."""
        meta = involved["metadata"]
        stamp = now.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        event = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
            "involvedObject": {
                "apiVersion": involved.get("apiVersion"),
                "kind": involved.get("kind"),
                "name": meta["name"],
                "namespace": meta["namespace"],
                "uid": meta.get("uid"),
            },
            "type": event_type,
            "reason": reason,
            "message": message if len(message) <= 1024 else message[:1021] + "...",
            "source": {"component": names.FIELD_MANAGER},
            "reportingComponent": names.FIELD_MANAGER,
            "firstTimestamp": stamp,
            "lastTimestamp": stamp,
            "count": 1,
        }
        with contextlib.suppress(ApiException):
            await self._core.create_namespaced_event(meta["namespace"], event)

    # ------------------------------------------------------------------ Secrets
    async def get_secret_data(self, namespace: str, name: str) -> dict[str, str] | None:
        """The Secret's ``data`` as the API returns it (base64 values; decode them with
        ``StorageCredentials.from_secret_data``); ``None`` when it does not exist.

        Values are credentials: callers must never log or store them."""
        try:
            secret = await self._core.read_namespaced_secret(name, namespace)
        except ApiException as err:
            if err.status == 404:
                return None
            raise _api_error(err) from err
        return dict(secret.data or {})


def _plural(kind: str) -> str:
    plurals = {
        "RayService": "rayservices",
        names.LORAMODEL_KIND: names.LORAMODEL_PLURAL,
        names.ADAPTERCATALOG_KIND: names.ADAPTERCATALOG_PLURAL,
    }
    return plurals[kind]
