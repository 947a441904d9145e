"""`lorafleet operator --verbose` (the chart's `operator.verbose`) logs everything at DEBUG but
what writes credentials: botocore's request signing and kubernetes_asyncio's response bodies
(a Secret's data) stay out of the log."""

from __future__ import annotations

import base64
import logging
from collections.abc import Iterator

import pytest

from lorafleet_operator.runner import CREDENTIAL_LOGGERS, configure_logging

pytestmark = pytest.mark.unit

KEY_ID = "AKIDLOGGINGTEST0001"
SECRET = "logging-test-secret-value"


@pytest.fixture
def verbose_log() -> Iterator[list[str]]:
    """The operator's logging configured as with --verbose; what reaches the root logger."""
    root = logging.getLogger()
    saved = (root.level, list(root.handlers))
    levels = {name: logging.getLogger(name).level for name in (*CREDENTIAL_LOGGERS, "asyncio")}
    records: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record.getMessage())

    configure_logging(verbose=True, log_format="plain")
    root.addHandler(Collect(logging.DEBUG))
    try:
        yield records
    finally:
        root.setLevel(saved[0])
        root.handlers[:] = saved[1]
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)


def test_verbose_logs_debug_but_no_signing_step_or_secret_body(verbose_log: list[str]) -> None:
    from botocore.auth import S3SigV4QueryAuth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    logging.getLogger("lorafleet_operator.reconcile").debug("Synced AdapterCatalog llm/a")
    # A real presigned S3 URL made by botocore (its canonical request names the key id).
    request = AWSRequest(method="GET", url="http://minio:9000/bucket/a/adapter_config.json")
    S3SigV4QueryAuth(Credentials(KEY_ID, SECRET), "s3", "us-east-1").add_auth(request)
    assert KEY_ID in request.url
    # What kubernetes_asyncio's REST client logs for every response (rest.py), a Secret here.
    encoded = base64.b64encode(SECRET.encode()).decode()
    logging.getLogger("kubernetes_asyncio.client.rest").debug(
        "response body: %s", f'{{"kind":"Secret","data":{{"k":"{encoded}"}}}}'
    )

    assert "Synced AdapterCatalog llm/a" in verbose_log
    text = "\n".join(verbose_log)
    assert KEY_ID not in text
    assert encoded not in text and SECRET not in text
