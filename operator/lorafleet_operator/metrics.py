"""The operator's Prometheus metrics (``lorafleet operator --metrics-address HOST:PORT``).

Every label has a fixed vocabulary or is bounded by the number of AdapterCatalogs:

- ``kind``: LoRAModel or AdapterCatalog.
- ``result``: :data:`RESULTS`, derived from the failure's reason by :func:`result_of`.
- ``reason``: :data:`REASONS`, the ``reason`` of every error type in ``errors`` plus ApiError
  and Crash; anything else is counted as ``Other`` (:func:`bounded_reason`).
- ``namespace``, ``catalog``: one set per AdapterCatalog, removed when it is deleted
  (:meth:`OperatorMetrics.forget_catalog`).

Never an adapter name, a URI or anything read from a Secret.

One :class:`OperatorMetrics` owns its own registry (tests make their own), served by
:meth:`OperatorMetrics.serve` on a daemon thread: scrapes never wait for the event loop."""

from __future__ import annotations

from typing import Final
from wsgiref.simple_server import WSGIServer

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    start_http_server,
)
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

from lorafleet_api import names
from lorafleet_operator import errors

KINDS: Final = (names.LORAMODEL_KIND, names.ADAPTERCATALOG_KIND)

# Reasons that are not a LorafleetError's: the API server refused a request (KubeApiError),
# and an exception nobody expected (a bug; the traceback is in the log).
API_ERROR: Final = "ApiError"
CRASH: Final = "Crash"
OTHER: Final = "Other"

_ERROR_TYPES: Final = tuple(
    value
    for value in vars(errors).values()
    if isinstance(value, type) and issubclass(value, errors.LorafleetError)
)
_STORAGE_REASONS: Final = frozenset(
    cls.default_reason for cls in _ERROR_TYPES if issubclass(cls, errors.StorageError)
)
REASONS: Final = (
    *sorted({cls.default_reason for cls in _ERROR_TYPES} | {API_ERROR, CRASH}),
    OTHER,
)

SUCCESS: Final = "success"
# A LorafleetError of no other result (DependencyMissing, ...) or an unknown reason.
ERROR: Final = "error"
_RESULT_OF_REASON: Final = {
    errors.InvalidSpecError.default_reason: "invalid_spec",
    **dict.fromkeys(sorted(_STORAGE_REASONS), "storage_error"),
    API_ERROR: "api_error",
    CRASH: "crash",
}
RESULTS: Final = (SUCCESS, *dict.fromkeys(_RESULT_OF_REASON.values()), ERROR)

ADAPTER_STATES: Final = ("found", "valid", "invalid")

# From a LoRAModel reconcile that only reads (~5 ms) to a 10,000-adapter first sync (tens of
# seconds) and a slow or stalled storage endpoint (minutes).
DURATION_BUCKETS: Final = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
    300.0,
    600.0,
)


def bounded_reason(reason: str) -> str:
    """``reason`` if it is in the vocabulary, else ``Other``."""
    return reason if reason in REASONS else OTHER


def result_of(reason: str | None) -> str:
    """The ``result`` label of a reconcile that failed with ``reason`` (None: it succeeded)."""
    return SUCCESS if reason is None else _RESULT_OF_REASON.get(reason, ERROR)


class MetricsEndpointError(RuntimeError):
    """The metrics endpoint could not be opened (port in use, unknown host, no permission)."""


class OperatorMetrics:
    """The operator's metrics and the registry that serves them."""

    def __init__(
        self, registry: CollectorRegistry | None = None, *, process_collectors: bool = True
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=True) if registry is None else registry
        if process_collectors:
            # process_* (CPU, memory, open files), python_info and python_gc_*: cheap, and
            # what tells a leak from a busy operator.
            ProcessCollector(registry=self.registry)
            PlatformCollector(registry=self.registry)
            GCCollector(registry=self.registry)
        self.reconciles = Counter(
            "lorafleet_operator_reconciles",
            "Reconciles (LoRAModel) and syncs (AdapterCatalog) by kind and result",
            ("kind", "result"),
            registry=self.registry,
        )
        self.reconcile_duration = Histogram(
            "lorafleet_operator_reconcile_duration_seconds",
            "Time one reconcile or catalog sync took, successful or not, by kind",
            ("kind",),
            buckets=DURATION_BUCKETS,
            registry=self.registry,
        )
        catalog = ("namespace", "catalog")
        self.catalog_adapters = Gauge(
            "lorafleet_catalog_adapters",
            "Adapters in the catalog's last successful sync, by state (found = valid + invalid)",
            (*catalog, "state"),
            registry=self.registry,
        )
        self.catalog_sync_duration = Gauge(
            "lorafleet_catalog_sync_duration_seconds",
            "How long the catalog's last successful sync took",
            catalog,
            registry=self.registry,
        )
        self.catalog_last_success = Gauge(
            "lorafleet_catalog_last_success_timestamp_seconds",
            "When the catalog's last successful sync finished (Unix time)",
            catalog,
            registry=self.registry,
        )
        self.catalog_sync_failures = Counter(
            "lorafleet_catalog_sync_failures",
            "Failed syncs of the catalog by reason (as in its Warning Event)",
            (*catalog, "reason"),
            registry=self.registry,
        )
        # Every kind x result exists from the start: rate() and absent() work before the
        # first failure.
        for kind in KINDS:
            self.reconcile_duration.labels(kind)
            for result in RESULTS:
                self.reconciles.labels(kind, result)

    def reconciled(self, kind: str, seconds: float, reason: str | None = None) -> None:
        """One reconcile (LoRAModel) or sync (AdapterCatalog) finished; ``reason`` is why it
        failed, None when it succeeded."""
        if kind not in KINDS:
            raise ValueError(f"unknown kind {kind!r}; expected one of {KINDS}")
        self.reconciles.labels(kind, result_of(reason)).inc()
        self.reconcile_duration.labels(kind).observe(seconds)

    def catalog_synced(
        self,
        namespace: str,
        catalog: str,
        *,
        found: int,
        valid: int,
        invalid: int,
        seconds: float,
        finished_at: float,
    ) -> None:
        """A sync of the catalog succeeded with these counts (``finished_at``: Unix time)."""
        for state, count in zip(ADAPTER_STATES, (found, valid, invalid), strict=True):
            self.catalog_adapters.labels(namespace, catalog, state).set(count)
        self.catalog_sync_duration.labels(namespace, catalog).set(seconds)
        self.catalog_last_success.labels(namespace, catalog).set(finished_at)

    def catalog_sync_failed(self, namespace: str, catalog: str, reason: str) -> None:
        self.catalog_sync_failures.labels(namespace, catalog, bounded_reason(reason)).inc()

    def forget_catalog(self, namespace: str, catalog: str) -> None:
        """Remove every series of a deleted catalog."""
        labels = {"namespace": namespace, "catalog": catalog}
        for metric in (
            self.catalog_adapters,
            self.catalog_sync_duration,
            self.catalog_last_success,
            self.catalog_sync_failures,
        ):
            metric.remove_by_labels(labels)

    def exposition(self) -> bytes:
        """What ``/metrics`` answers (Prometheus text format)."""
        return generate_latest(self.registry)

    def serve(self, host: str, port: int) -> WSGIServer:
        """Serve ``/metrics`` on ``host:port`` from a daemon thread until the server is shut
        down. Raises :class:`MetricsEndpointError` when the address cannot be bound, so the
        operator does not start without the endpoint it was asked for."""
        try:
            server, _ = start_http_server(port, host, registry=self.registry)
        except OSError as err:
            raise MetricsEndpointError(
                f"cannot serve metrics on {_address(host, port)}: {err.strerror or err}"
            ) from err
        return server


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


__all__ = [
    "API_ERROR",
    "CRASH",
    "KINDS",
    "OTHER",
    "REASONS",
    "RESULTS",
    "MetricsEndpointError",
    "OperatorMetrics",
    "bounded_reason",
    "result_of",
]
