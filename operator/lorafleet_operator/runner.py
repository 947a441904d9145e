"""Runs the kopf operator in this process (``lorafleet operator``).

Standalone mode, deliberately: lorafleet runs as one replica (the chart's Deployment uses
the Recreate strategy), so kopf's peering, which needs its own cluster-wide CRDs and RBAC,
buys nothing. Every write is idempotent (server-side apply guarded by our spec hash; status
patched only when it changed), so a restart at any point converges.

The metrics endpoint (``--metrics-address``) is opened before kopf starts: an address that
cannot be bound stops the operator with that error instead of running unobserved."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Final

import kopf

from lorafleet_operator.metrics import OperatorMetrics
from lorafleet_operator.model.config import OperatorConfig
from lorafleet_operator.reconcile.state import OperatorState

# Loggers of libraries that write credentials at DEBUG: kubernetes_asyncio every response body
# (a Secret's data included), botocore each signing step (the access key id in the credential
# scope) and urllib3 each request line (a presigned URL). Never below INFO, even --verbose.
CREDENTIAL_LOGGERS: Final = ("kubernetes_asyncio.client.rest", "botocore", "urllib3")

LOG_FORMATS = {
    "plain": kopf.LogFormat.PLAIN,
    "full": kopf.LogFormat.FULL,
    "json": kopf.LogFormat.JSON,
}


def configure_logging(*, verbose: bool, log_format: str) -> None:
    """kopf's logging (DEBUG for everything with ``verbose``), except what writes credentials."""
    kopf.configure(verbose=verbose, log_format=LOG_FORMATS[log_format])
    if not verbose:
        logging.getLogger("kubernetes_asyncio").setLevel(logging.WARNING)
    for name in CREDENTIAL_LOGGERS:
        logger = logging.getLogger(name)
        # Raise, never lower: without --verbose kubernetes_asyncio stays at WARNING.
        if logger.getEffectiveLevel() < logging.INFO:
            logger.setLevel(logging.INFO)


def run_operator(
    *,
    namespaces: Sequence[str],
    log_format: str,
    liveness_endpoint: str | None,
    verbose: bool,
    config: OperatorConfig,
) -> None:
    import lorafleet_operator.handlers  # noqa: F401  (registers the handlers with kopf)

    configure_logging(verbose=verbose, log_format=log_format)
    metrics = OperatorMetrics()
    server = None
    if config.metrics_endpoint is not None:
        # Raises MetricsEndpointError (the CLI says why and exits 1) before kopf starts.
        server = metrics.serve(*config.metrics_endpoint)
        logging.getLogger(__name__).info(
            "Opened the metrics endpoint on %s (/metrics)", config.metrics_address
        )
    state = OperatorState(config=config, namespaces=tuple(namespaces), metrics=metrics)
    try:
        kopf.run(
            standalone=True,
            clusterwide=not namespaces,
            namespaces=list(namespaces),
            liveness_endpoint=liveness_endpoint,
            # One typed object for everything kept between events (handlers.lifecycle.state_of).
            memo=kopf.Memo(state=state),
        )
    finally:
        if server is not None:
            server.shutdown()
            server.server_close()
