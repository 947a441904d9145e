"""`lorafleet serve`: a LoRAModel and its catalog served on this machine without a cluster,
as a user tries it with `make serve` (the example LoRAModel, the tiny model, adapters in a
local folder)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from lorafleet_testbed import process
from lorafleet_testbed.tinymodel import (
    EXAMPLE_ADAPTERS,
    build_example_stand_in,
    build_lora_adapter,
)

EXAMPLE = Path(__file__).parents[2] / "examples" / "lora-model.yaml"


def _get(url: str) -> dict[str, Any] | None:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            data: dict[str, Any] = json.loads(response.read())
            return data
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return None


def _complete(base: str, model: str) -> int:
    body = json.dumps({"model": model, "prompt": "The quick", "max_tokens": 4}).encode()
    request = urllib.request.Request(
        base + "/completions", data=body, headers={"content-type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return int(response.status)
    except urllib.error.HTTPError as err:
        return err.code


def _wait_for_models(
    base: str, wanted: set[str], proc: subprocess.Popen[str], timeout: float
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, "lorafleet serve exited early"
        listed = _get(base + "/models")
        if listed and wanted <= {m["id"] for m in listed["data"]}:
            return
        time.sleep(2)
    pytest.fail(f"lorafleet serve did not list {sorted(wanted)} within {timeout:.0f} s")


def test_lorafleet_serve_runs_the_example_on_local_ray(tmp_path: Path) -> None:
    """What `make serve` runs: examples/lora-model.yaml unchanged, the tiny model standing in
    for its base model (LORAFLEET_MODEL_SOURCE) and a local folder for its S3 catalog."""
    base, catalog_file = build_example_stand_in(tmp_path / "tiny")
    adapters = tmp_path / "tiny" / "adapters"
    port = process.free_port()
    log = (tmp_path / "serve.log").open("w")
    argv = [sys.executable, "-m", "lorafleet_cli.main", "serve", "-f", str(EXAMPLE)]
    options = ["-f", str(catalog_file), "--port", str(port), "--rescan-seconds", "2"]
    proc = subprocess.Popen(
        [*argv, *options],
        stdout=log,
        stderr=subprocess.STDOUT,
        text=True,
        env={
            **os.environ,
            "LORAFLEET_MODEL_SOURCE": str(base),
            "LORAFLEET_ADAPTER_CACHE": str(tmp_path / "cache"),
        },
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}/v1"
    model = "qwen2.5-0.5b"  # the example's modelId
    try:
        _wait_for_models(url, {model, *(f"{model}:{a}" for a in EXAMPLE_ADAPTERS)}, proc, 300)
        assert _complete(url, model) == 200
        assert _complete(url, f"{model}:support-v1") == 200
        assert _complete(url, f"{model}:unknown") == 404
        # A new adapter folder is picked up by the periodic re-scan: no restart.
        shutil.copytree(build_lora_adapter(base, tmp_path / "new", seed=9), adapters / "refunds")
        _wait_for_models(url, {f"{model}:refunds"}, proc, 60)
        assert _complete(url, f"{model}:refunds") == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=90)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()
    assert proc.returncode == 0, (tmp_path / "serve.log").read_text()[-3000:]
