"""Storage servers on loopback: MinIO (S3-compatible) and fake-gcs-server (GCS emulator).

Both keep their data on disk, so a test can stop a server mid-life and start it again on the
same port with the same objects (outage and recovery)."""

from __future__ import annotations

import abc
import secrets
import shutil
import tempfile
from pathlib import Path
from typing import Any

from lorafleet_testbed import process
from lorafleet_testbed.toolchain import tool


class _Server(abc.ABC):
    name = ""

    def __init__(self, data_dir: Path | None = None) -> None:
        self._owns = data_dir is None
        self.data_dir = (
            Path(tempfile.mkdtemp(prefix=f"lorafleet-{self.name}-"))
            if data_dir is None
            else data_dir
        )
        self.port = process.free_port()
        self.proc: process.ManagedProcess | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @abc.abstractmethod
    def _argv(self) -> list[str]:
        """The command line that starts the server."""

    def _env(self) -> dict[str, str]:
        return {}

    @abc.abstractmethod
    def _health_url(self) -> str:
        """A URL that answers 2xx once the server is ready."""

    def start(self) -> None:
        """Start (or start again after :meth:`stop`) on the same port and data."""
        if self.proc is not None and self.proc.alive():
            return
        self.proc = process.start(self.name, self._argv(), self.data_dir / "logs", env=self._env())
        process.wait_until(
            self.proc, lambda: process.http_ok(self._health_url()), timeout=60, what="healthy"
        )

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()
            self.proc = None

    def close(self) -> None:
        self.stop()
        if self._owns:
            shutil.rmtree(self.data_dir, ignore_errors=True)


class MinioServer(_Server):
    """MinIO with random root credentials (``access_key`` / ``secret_key``)."""

    name = "minio"

    def __init__(self, data_dir: Path | None = None) -> None:
        super().__init__(data_dir)
        self.access_key = "lorafleet-" + secrets.token_hex(4)
        self.secret_key = secrets.token_urlsafe(24)
        self.region = "us-east-1"

    def s3_client(self, *, secret_key: str | None = None, **config: Any) -> Any:
        """A boto3 S3 client for this server (``secret_key`` to try a wrong one; ``config``
        goes to botocore's Config, e.g. retries or timeouts)."""
        import boto3  # the test bed runs without boto3 until a test needs S3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name=self.region,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=secret_key or self.secret_key,
            config=Config(**config) if config else None,
        )

    def _argv(self) -> list[str]:
        return [
            str(tool("minio")),
            "server",
            str(self.data_dir / "data"),
            f"--address=127.0.0.1:{self.port}",
            "--quiet",
        ]

    def _env(self) -> dict[str, str]:
        return {
            "MINIO_ROOT_USER": self.access_key,
            "MINIO_ROOT_PASSWORD": self.secret_key,
            "MINIO_REGION": self.region,
            "MINIO_BROWSER": "off",
            "MINIO_UPDATE": "off",
            "MINIO_CI_CD": "1",
        }

    def _health_url(self) -> str:
        return f"{self.endpoint}/minio/health/ready"


class FakeGcsServer(_Server):
    """fake-gcs-server over plain HTTP; clients find it through STORAGE_EMULATOR_HOST."""

    name = "fake-gcs-server"

    def _argv(self) -> list[str]:
        root = self.data_dir / "data"
        root.mkdir(parents=True, exist_ok=True)
        return [
            str(tool("fake-gcs-server")),
            "-scheme=http",
            "-host=127.0.0.1",
            f"-port={self.port}",
            "-backend=filesystem",
            f"-filesystem-root={root}",
            f"-public-host=127.0.0.1:{self.port}",
            f"-external-url={self.endpoint}",
            "-log-level=warn",
        ]

    def _health_url(self) -> str:
        return f"{self.endpoint}/storage/v1/b"
