"""`lorafleet serve`: a LoRAModel on this machine, without a cluster.

The operator's own code turns the LoRAModel into the runtime's arguments and scans the
referenced catalogs (the same validation as a catalog sync); the index is written to a
directory in the catalog-index format, which the runtime reads instead of ConfigMaps and which
is re-scanned periodically, so adapters added to storage become servable as in a cluster. The
runtime itself (Ray Serve + vLLM) runs in a child process (``python -m
lorafleet_runtime.local``): the CLI never imports ray, so `lorafleet render` and `lorafleet
operator` work without it."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from lorafleet_api import names
from lorafleet_api.adapter_support import servable_counts, vllm_rank_histogram
from lorafleet_api.catalog_index import AdapterRecord
from lorafleet_api.contract import RuntimeArgs
from lorafleet_operator.builders.runtime_args import render_runtime_args
from lorafleet_operator.errors import InvalidSpecError
from lorafleet_operator.model.adaptercatalog import AdapterCatalog
from lorafleet_operator.model.catalog import CatalogSnapshot
from lorafleet_operator.model.loramodel import LoRAModel
from lorafleet_operator.storage import scan_source
from lorafleet_runtime.adapters.index import write_index_directory, write_storage_options

log = logging.getLogger(__name__)

# vLLM's CPU build (FACTS.md): fp32, eager mode, and a small share of RAM for the KV cache.
CPU_GPU_MEMORY_UTILIZATION: Final = 0.2


class LocalServeError(Exception):
    """The given files cannot be served locally; the message says why."""


@dataclass
class LocalCatalog:
    catalog: AdapterCatalog
    # None until a scan succeeded: such a catalog has no index yet (as in a cluster before
    # its first sync), rather than an empty one.
    records: list[AdapterRecord] | None = None

    def rescan(self) -> None:
        """Scan storage again; on failure keep the last good records and say why."""
        try:
            previous = {r.name: r for r in self.records or []}
            self.records = asyncio.run(scan_source(self.catalog.spec, None, previous)).records
        except Exception as err:  # noqa: BLE001 - keep serving the last good index
            log.warning("Could not scan catalog %s: %s", self.catalog.name, err)


def pick_documents(
    docs: Sequence[Mapping[str, Any]],
) -> tuple[Mapping[str, Any], dict[str, AdapterCatalog]]:
    models = [d for d in docs if d.get("kind") == names.LORAMODEL_KIND]
    if len(models) != 1:
        raise LocalServeError(f"expected exactly one LoRAModel in the files, found {len(models)}")
    catalogs = {}
    for doc in docs:
        if doc.get("kind") == names.ADAPTERCATALOG_KIND:
            catalog = AdapterCatalog.from_object(doc)
            catalogs[catalog.name] = catalog
    return models[0], catalogs


def snapshot(catalog: AdapterCatalog, records: Sequence[AdapterRecord] | None) -> CatalogSnapshot:
    return CatalogSnapshot(
        name=catalog.name,
        namespace=catalog.namespace,
        found=records is not None,
        rank_histogram=vllm_rank_histogram(records or ()),
        valid=sum(1 for record in records or () if record.valid),
        servable=servable_counts(records or ()),
    )


def local_runtime_args(
    model_obj: Mapping[str, Any],
    catalogs: Mapping[str, LocalCatalog],
    *,
    index_dir: Path,
    model_source: str | None,
    cpu: bool,
) -> RuntimeArgs:
    """The runtime's arguments for ``model_obj``, as the operator would render them, plus the
    local index directory; on CPU, vLLM's CPU settings where the spec leaves them open."""
    model = LoRAModel.from_object(model_obj)
    # A catalog no file defines stays in the arguments, as in a cluster where it does not
    # exist yet: its index is missing, so none of its adapters is served (see missing_catalogs).
    snapshots = [snapshot(c.catalog, c.records) for c in catalogs.values()]
    args = render_runtime_args(model, snapshots)
    # Local catalogs live in the default namespace of the files, not the model's.
    update: dict[str, Any] = {"catalog_index_dir": str(index_dir)}
    if model_source:
        local = Path(model_source)
        update["model_source"] = f"file://{local.resolve()}" if local.exists() else model_source
    if cpu:
        engine = args.engine
        extra = dict(engine.extra_engine_kwargs)
        extra.setdefault("enforce_eager", True)
        update["use_gpu"] = False
        # An accelerator type (L4, A100...) is a Ray resource this machine does not have.
        update["accelerator_type"] = None
        update["engine"] = engine.model_copy(
            update={
                "dtype": "float32",
                "gpu_memory_utilization": engine.gpu_memory_utilization
                or CPU_GPU_MEMORY_UTILIZATION,
                "extra_engine_kwargs": extra,
                "tensor_parallel_size": 1,
            }
        )
        update["autoscaling_config"] = args.autoscaling_config.model_copy(
            update={"min_replicas": 1, "max_replicas": 1}
        )
    return args.model_copy(update=update)


def missing_catalogs(
    model_obj: Mapping[str, Any], given: Mapping[str, AdapterCatalog]
) -> list[str]:
    """Catalogs the LoRAModel names that no file defines (served without their adapters)."""
    model = LoRAModel.from_object(model_obj)
    return sorted(c.name for c in model.spec.catalogs if c.name not in given)


def publish(index_dir: Path, catalogs: Mapping[str, LocalCatalog]) -> None:
    for local in catalogs.values():
        catalog = local.catalog
        if local.records is None:
            continue
        write_storage_options(
            index_dir, catalog.name, catalog.spec.source.endpoint, catalog.spec.source.region
        )
        write_index_directory(
            index_dir,
            catalog.name,
            catalog.namespace,
            catalog.spec.source.location.uri,
            local.records,
        )


def gpu_present() -> bool:
    return Path("/dev/nvidia0").exists()


def serve_locally(
    docs: Sequence[Mapping[str, Any]],
    *,
    work_dir: Path,
    host: str,
    port: int,
    model_source: str | None,
    cpu: bool | None,
    rescan_seconds: float,
) -> int:
    """Scan, write the index, run the runtime in a child process and keep the index fresh
    until the child exits or this process is told to stop. Returns the exit code."""
    model_obj, given = pick_documents(docs)
    model = LoRAModel.from_object(model_obj)
    wanted = {c.name for c in model.spec.catalogs}
    catalogs = {name: LocalCatalog(catalog) for name, catalog in given.items() if name in wanted}
    for local in catalogs.values():
        local.rescan()
    for name in missing_catalogs(model_obj, given):
        log.warning(
            "LoRAModel %s refers to AdapterCatalog %s, which no -f file defines: serving "
            "without its adapters (give its YAML with -f to serve them)",
            model.name,
            name,
        )
    index_dir = work_dir / "catalog-index"
    publish(index_dir, catalogs)
    try:
        args = local_runtime_args(
            model_obj,
            catalogs,
            index_dir=index_dir,
            model_source=model_source,
            cpu=not gpu_present() if cpu is None else cpu,
        )
    except InvalidSpecError as err:
        raise LocalServeError(err.message) from err
    args_path = work_dir / "runtime-args.json"
    args_path.write_text(json.dumps(args.to_serve_args(), indent=2, sort_keys=True))
    for name, local in catalogs.items():
        if local.records is not None:
            valid = sum(1 for r in local.records if r.valid)
            log.info("Scanned catalog %s: %d adapters, %d valid", name, len(local.records), valid)
    argv = [sys.executable, "-m", "lorafleet_runtime.local", str(args_path)]
    child = subprocess.Popen([*argv, "--host", host, "--port", str(port)], env=os.environ.copy())
    stopping = False

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True
        child.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    next_scan = time.monotonic() + rescan_seconds
    while child.poll() is None:
        time.sleep(0.5)
        if stopping or time.monotonic() < next_scan:
            continue
        next_scan = time.monotonic() + rescan_seconds
        for local in catalogs.values():
            local.rescan()
        publish(index_dir, catalogs)
    return 0 if stopping else int(child.returncode or 0)
