"""The ``lorafleet`` command line. Subcommands import what they need lazily, so
``lorafleet version`` works with nothing but the core dependencies installed."""

from __future__ import annotations

import platform
import sys
from pathlib import Path
from typing import Any

import click
import yaml

from lorafleet_api import names
from lorafleet_operator import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """lorafleet: serve one base LLM with many LoRA adapters on KubeRay."""


@main.command()
def version() -> None:
    """Print the lorafleet version."""
    click.echo(f"lorafleet {__version__} (python {platform.python_version()})")


def _read_documents(paths: tuple[Path, ...]) -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for path in paths:
        text = sys.stdin.read() if str(path) == "-" else path.read_text()
        try:
            loaded = [d for d in yaml.safe_load_all(text) if d is not None]
        except yaml.YAMLError as err:
            raise click.ClickException(f"{path}: not valid YAML: {err}") from err
        for doc in loaded:
            if not isinstance(doc, dict):
                raise click.ClickException(f"{path}: every document must be a mapping")
            docs.append(doc)
    return docs


@main.command()
@click.option(
    "-f",
    "--filename",
    "files",
    multiple=True,
    required=True,
    type=click.Path(allow_dash=True, path_type=Path),
    help="LoRAModel (and AdapterCatalog) YAML; repeat for several files, - for stdin.",
)
@click.option("--image", default=None, help="Runtime image when the LoRAModel names none.")
@click.option(
    "--rbac/--no-rbac",
    default=True,
    show_default=True,
    help="Also print the Ray pods' ServiceAccount, Role and RoleBinding (the RayService's pods "
    "run as that ServiceAccount unless spec.serviceAccountName names another).",
)
def render(files: tuple[Path, ...], image: str | None, rbac: bool) -> None:
    """Print what the operator applies for LoRAModels, without a cluster (review, GitOps):
    the runtime ServiceAccount, Role and RoleBinding, then the RayService.

    AdapterCatalogs given with -f are used as they are (their status, if any, decides the
    default maxLoraRank and the index ConfigMaps and Secret the Role names); referenced
    catalogs not given count as not synced yet."""
    from lorafleet_operator.builders import dump_manifest, render_rayservice, render_runtime_rbac
    from lorafleet_operator.errors import InvalidSpecError
    from lorafleet_operator.model.catalog import CatalogSnapshot
    from lorafleet_operator.model.config import OperatorConfig

    docs = _read_documents(files)
    models = [d for d in docs if d.get("kind") == names.LORAMODEL_KIND]
    if not models:
        raise click.ClickException("no LoRAModel found in the given files")
    catalogs = [d for d in docs if d.get("kind") == names.ADAPTERCATALOG_KIND]
    config = OperatorConfig(default_image=image) if image else OperatorConfig()
    out: list[str] = []
    for model in models:
        namespace = (model.get("metadata") or {}).get("namespace") or "default"
        snapshots = [
            CatalogSnapshot.from_object(c)
            for c in catalogs
            if ((c.get("metadata") or {}).get("namespace") or "default") == namespace
        ]
        try:
            if rbac:
                out.extend(dump_manifest(obj) for obj in render_runtime_rbac(model, snapshots))
            out.append(dump_manifest(render_rayservice(model, snapshots, config)))
        except InvalidSpecError as err:
            name = (model.get("metadata") or {}).get("name", "?")
            raise click.ClickException(f"LoRAModel {name}: {err.message}") from err
    click.echo("---\n".join(out), nl=False)


def _check_metrics_address(ctx: click.Context, param: click.Parameter, value: str) -> str:
    from lorafleet_operator.model.config import split_host_port

    if value:
        try:
            split_host_port(value)
        except ValueError as err:
            raise click.BadParameter(str(err)) from None
    return value


@main.command()
@click.option(
    "-n",
    "--namespace",
    "namespaces",
    multiple=True,
    envvar="LORAFLEET_NAMESPACES",
    help="Watch only these namespaces (repeat; env: space-separated). Default: every namespace.",
)
@click.option(
    "--log-format",
    type=click.Choice(["plain", "full", "json"]),
    default="plain",
    envvar="LORAFLEET_LOG_FORMAT",
    show_default=True,
)
@click.option(
    "--liveness",
    default="http://0.0.0.0:8080/healthz",
    envvar="LORAFLEET_LIVENESS_ENDPOINT",
    show_default=True,
    help="kopf liveness endpoint; 'none' disables it.",
)
@click.option(
    "--image",
    default=None,
    envvar="LORAFLEET_DEFAULT_IMAGE",
    help="Runtime image for LoRAModels that name none.",
)
@click.option(
    "--debounce-seconds",
    type=float,
    default=30.0,
    envvar="LORAFLEET_DEBOUNCE_SECONDS",
    show_default=True,
    help="How long a Ready LoRAModel's RayService must look unhealthy before Ready turns False.",
)
@click.option(
    "--drift-check-seconds",
    type=click.FloatRange(min=1),
    default=60.0,
    envvar="LORAFLEET_DRIFT_CHECK_SECONDS",
    show_default=True,
    help="How often every LoRAModel is reconciled again, events or not.",
)
@click.option(
    "--catalog-tick-seconds",
    type=click.FloatRange(min=0, min_open=True),
    default=2.0,
    envvar="LORAFLEET_CATALOG_TICK_SECONDS",
    show_default=True,
    help="How often the catalog loop looks for catalogs whose syncInterval is up.",
)
@click.option(
    "--catalog-fetch-concurrency",
    type=click.IntRange(min=1),
    default=32,
    envvar="LORAFLEET_CATALOG_FETCH_CONCURRENCY",
    show_default=True,
    help="Storage requests in flight per catalog sync.",
)
@click.option(
    "--metrics-address",
    default="",
    envvar="LORAFLEET_METRICS_ADDRESS",
    callback=_check_metrics_address,
    help="Serve Prometheus metrics on HOST:PORT (/metrics), e.g. 0.0.0.0:9090. Default: none.",
)
@click.option(
    "--kubeconfig",
    default=None,
    envvar="KUBECONFIG",
    help="Kubeconfig file. Default: ~/.kube/config if present, else in-cluster credentials.",
)
@click.option("-v", "--verbose", is_flag=True)
def operator(
    namespaces: tuple[str, ...],
    log_format: str,
    liveness: str,
    image: str | None,
    debounce_seconds: float,
    drift_check_seconds: float,
    catalog_tick_seconds: float,
    catalog_fetch_concurrency: int,
    metrics_address: str,
    kubeconfig: str | None,
    verbose: bool,
) -> None:
    """Run the operator (kopf, standalone) against the current kubeconfig or in-cluster."""
    from lorafleet_operator.metrics import MetricsEndpointError
    from lorafleet_operator.model.config import OperatorConfig
    from lorafleet_operator.runner import run_operator

    settings: dict[str, Any] = {
        "debounce_seconds": debounce_seconds,
        "drift_check_seconds": drift_check_seconds,
        "catalog_tick_seconds": catalog_tick_seconds,
        "catalog_fetch_concurrency": catalog_fetch_concurrency,
        "metrics_address": metrics_address,
        "kubeconfig": kubeconfig or None,
    }
    if image:
        settings["default_image"] = image
    config = OperatorConfig(**settings)
    try:
        run_operator(
            namespaces=namespaces,
            log_format=log_format,
            liveness_endpoint=None if liveness == "none" else liveness,
            verbose=verbose,
            config=config,
        )
    except MetricsEndpointError as err:
        raise click.ClickException(str(err)) from None


@main.command()
@click.option(
    "-f",
    "--filename",
    "files",
    multiple=True,
    required=True,
    type=click.Path(allow_dash=True, path_type=Path),
    help="One LoRAModel and the AdapterCatalogs it refers to (repeat -f).",
)
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=int, default=8000, show_default=True)
@click.option(
    "--model-source",
    default=None,
    envvar="LORAFLEET_MODEL_SOURCE",
    show_envvar=True,
    help="Base model to load instead of spec.baseModel.source (a local folder or HF id).",
)
@click.option(
    "--cpu/--gpu",
    "cpu",
    default=None,
    help="vLLM's CPU build (fp32, eager) or the GPU. Default: GPU when /dev/nvidia0 exists.",
)
@click.option(
    "--rescan-seconds",
    type=float,
    default=10.0,
    show_default=True,
    help="How often the catalogs are scanned again (new adapters become servable).",
)
@click.option(
    "--work-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Where the catalog index and runtime arguments go. Default: a temporary folder.",
)
def serve(
    files: tuple[Path, ...],
    host: str,
    port: int,
    model_source: str | None,
    cpu: bool | None,
    rescan_seconds: float,
    work_dir: Path | None,
) -> None:
    """Serve a LoRAModel on this machine with Ray Serve + vLLM (no cluster needed).

    Needs the runtime installed (`make runtime-cpu` on machines without a GPU). Storage
    credentials come from the standard chains (AWS_* variables, GOOGLE_APPLICATION_CREDENTIALS,
    STORAGE_EMULATOR_HOST). Clients use http://HOST:PORT/v1 with model="<modelId>" or
    "<modelId>:<adapter>"."""
    import logging
    import tempfile

    from lorafleet_cli.local_serve import LocalServeError, serve_locally
    from lorafleet_operator.errors import LorafleetError

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    docs = _read_documents(files)
    with tempfile.TemporaryDirectory(prefix="lorafleet-serve-") as scratch:
        folder = work_dir or Path(scratch)
        folder.mkdir(parents=True, exist_ok=True)
        try:
            code = serve_locally(
                docs,
                work_dir=folder,
                host=host,
                port=port,
                model_source=model_source,
                cpu=cpu,
                rescan_seconds=rescan_seconds,
            )
        except LocalServeError as err:
            raise click.ClickException(str(err)) from None
        except LorafleetError as err:
            raise click.ClickException(f"{err.reason}: {err.message}") from None
    sys.exit(code)


@main.group()
def catalog() -> None:
    """Inspect adapter catalogs."""


@catalog.command("scan")
@click.argument("uri")
@click.option("--endpoint", default=None, help="S3-compatible endpoint URL (MinIO, ...).")
@click.option("--region", default=None, help="S3 region.")
@click.option("--base-model", default=None, help="Adapters for another base model are invalid.")
@click.option("--include", multiple=True, help="Glob on adapter names to keep (repeat).")
@click.option("--exclude", multiple=True, help="Glob on adapter names to leave out (repeat).")
@click.option("--max-adapter-size", default="4Gi", show_default=True)
@click.option(
    "-o",
    "--output",
    type=click.Choice(["table", "json", "yaml"]),
    default="table",
    show_default=True,
)
def catalog_scan(
    uri: str,
    endpoint: str | None,
    region: str | None,
    base_model: str | None,
    include: tuple[str, ...],
    exclude: tuple[str, ...],
    max_adapter_size: str,
    output: str,
) -> None:
    """List URI (s3://, gs://, file:///) and validate every adapter, as a sync would.

    Credentials come from the standard chains (AWS_* variables, ~/.aws,
    GOOGLE_APPLICATION_CREDENTIALS, STORAGE_EMULATOR_HOST). Exits 1 when the source cannot
    be listed."""
    import asyncio
    import json

    from lorafleet_operator.errors import LorafleetError
    from lorafleet_operator.model.adaptercatalog import AdapterCatalogSpec
    from lorafleet_operator.status import rank_histogram
    from lorafleet_operator.storage import scan_source

    try:
        spec = AdapterCatalogSpec.model_validate(
            {
                "source": {"uri": uri, "endpoint": endpoint, "region": region},
                "baseModel": base_model,
                "include": include,
                "exclude": exclude,
                "maxAdapterSize": max_adapter_size,
            }
        )
    except ValueError as err:
        raise click.ClickException(str(err)) from None
    try:
        result = asyncio.run(scan_source(spec))
    except LorafleetError as err:
        raise click.ClickException(f"{err.reason}: {err.message}") from None
    records = result.records
    valid = sum(1 for record in records if record.valid)
    counts = {
        "found": len(records),
        "valid": valid,
        "invalid": len(records) - valid,
        "excluded": result.excluded,
        "strayFiles": result.stray_files,
    }
    summary = {
        "uri": spec.source.location.uri,
        "counts": counts,
        "rankHistogram": rank_histogram(records),
        "adapters": [json.loads(record.to_json()) for record in records],
    }
    if output == "json":
        click.echo(json.dumps(summary, indent=2, sort_keys=True))
        return
    if output == "yaml":
        click.echo(yaml.safe_dump(summary, sort_keys=True), nl=False)
        return
    rows = [("NAME", "VALID", "RANK", "ALPHA", "SIZE", "REVISION", "REASON")]
    for record in records:
        rows.append(
            (
                record.name,
                "yes" if record.valid else "no",
                str(record.rank or "-"),
                f"{record.alpha:g}" if record.alpha is not None else "-",
                _human_size(record.size_bytes),
                record.revision,
                "" if record.valid else f"{record.reason}: {record.message}",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row[:-1], widths, strict=True)]
        click.echo("  ".join([*cells, row[-1]]).rstrip())
    click.echo(
        f"\n{counts['found']} adapters in {summary['uri']}: {counts['valid']} valid, "
        f"{counts['invalid']} invalid, {counts['excluded']} excluded, "
        f"{counts['strayFiles']} stray files ignored"
    )


def _human_size(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"


if __name__ == "__main__":  # python -m lorafleet_cli.main
    main()
