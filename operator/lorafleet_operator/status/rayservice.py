"""What a RayService's status says about serving, read the way KubeRay v1.7.0 writes it.

No single field means "serving": KubeRay's Ready condition stays True during an upgrade (the
old cluster serves), may describe an older generation, and says nothing of Serve
applications that failed to deploy on a new cluster. So the signals are read one by one."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from lorafleet_api.names import SERVE_APPLICATION_NAME
from lorafleet_operator.status.conditions import find_condition, is_true

# Ray Serve application and deployment statuses that will not heal without a change.
FAILED_STATUSES = frozenset({"DEPLOY_FAILED", "UNHEALTHY"})
RUNNING = "RUNNING"
# The RayService Ready reason KubeRay sets when it refuses the spec.
KUBERAY_VALIDATION_FAILED = "ValidationFailed"
# Ray colours the actor line of a replica's traceback.
_ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
# Where a Python traceback starts, as Ray writes one into a Serve status message.
_TRACEBACK_START = re.compile(r"(Traceback \(most recent call last\)|ray::|\s+File \")")
# The exception line ending a traceback: a (dotted) class name at column 0, then a colon.
_EXCEPTION_LINE = re.compile(r"[A-Za-z_][\w.]*(: |:$|$)")


def summarize_serve_message(message: str) -> str:
    """A Serve status message a person can act on within a condition's 1,024 characters.

    A replica that fails to start puts its whole traceback into the message (4 KB and more,
    ANSI-coloured): cut at the condition's limit, only the first frames would remain and
    never the error. Keep the sentence before the traceback and the exception it ends with."""
    text = _ANSI_ESCAPE.sub("", message).strip()
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if _TRACEBACK_START.match(line)), None)
    if start is None:
        return text
    ends = [
        i
        for i in range(start + 1, len(lines))
        if not lines[i][:1].isspace() and _EXCEPTION_LINE.match(lines[i])
    ]
    if not ends:
        return text
    head = " ".join(line.strip() for line in lines[:start] if line.strip())
    tail = "\n".join(lines[ends[-1] :]).strip()
    return f"{head} {tail}" if head else tail


@dataclass(frozen=True)
class NotReady:
    """Why the RayService does not serve the current spec: a condition reason and message."""

    reason: str
    message: str


@dataclass(frozen=True)
class RayServiceHealth:
    """The serving signals of one RayService."""

    name: str
    kuberay_ready: bool
    kuberay_reason: str
    kuberay_message: str
    upgrading: bool
    upgrade_message: str
    current: bool
    applications: Mapping[str, str]
    serve_endpoints: int
    # Human-readable: failed Serve applications/deployments (active or pending cluster).
    failures: tuple[str, ...]
    # Human-readable: what deploying applications/deployments report (e.g. waiting for GPUs).
    progress: tuple[str, ...]

    @property
    def invalid(self) -> bool:
        """KubeRay refused the RayService spec (it will not act on it)."""
        return not self.kuberay_ready and self.kuberay_reason == KUBERAY_VALIDATION_FAILED

    @property
    def not_ready(self) -> NotReady | None:
        """The first signal that says "not serving", or None when every signal says serving."""
        if self.invalid:
            return NotReady(
                "RayServiceInvalid", f"KubeRay rejected the RayService: {self.kuberay_message}"
            )
        if self.failures:
            return NotReady("ServeDeployFailed", "; ".join(self.failures))
        if not self.current:
            return NotReady(
                "RayServiceReconciling",
                f"KubeRay has not yet acted on the latest spec of RayService {self.name}",
            )
        if self.upgrading:
            return NotReady("UpgradeInProgress", self.upgrade_message or "Ray cluster upgrade")
        if not self.kuberay_ready:
            detail = ": ".join(part for part in (self.kuberay_reason, self.kuberay_message) if part)
            return NotReady(
                "RayServiceNotReady",
                f"RayService {self.name} is not Ready ({detail or 'no status'})",
            )
        if SERVE_APPLICATION_NAME not in self.applications:
            return NotReady(
                "ApplicationNotRunning",
                f"Serve application {SERVE_APPLICATION_NAME} is not deployed yet",
            )
        not_running = sorted(
            f"{app} is {status or 'UNKNOWN'}"
            for app, status in self.applications.items()
            if status != RUNNING
        )
        if not_running:
            return NotReady("ApplicationNotRunning", "Serve application " + ", ".join(not_running))
        if self.serve_endpoints <= 0:
            return NotReady("NoServeEndpoints", f"RayService {self.name} has no serve endpoints")
        return None


def assess_rayservice(rayservice: Mapping[str, Any]) -> RayServiceHealth:
    metadata = rayservice.get("metadata") or {}
    status = rayservice.get("status") or {}
    conditions = status.get("conditions") or []
    ready = find_condition(conditions, "Ready") or {}
    upgrade = find_condition(conditions, "UpgradeInProgress") or {}
    active = status.get("activeServiceStatus") or {}
    pending = status.get("pendingServiceStatus") or {}
    active_apps = active.get("applicationStatuses") or {}
    generation = metadata.get("generation")
    failures: list[str] = []
    progress: list[str] = []
    for where, apps in (
        ("", active_apps),
        ("new Ray cluster: ", pending.get("applicationStatuses") or {}),
    ):
        _collect_messages(where, apps, failures, progress)
    return RayServiceHealth(
        name=str(metadata.get("name", "")),
        kuberay_ready=ready.get("status") == "True",
        kuberay_reason=str(ready.get("reason") or ""),
        kuberay_message=str(ready.get("message") or ""),
        upgrading=is_true(conditions, "UpgradeInProgress"),
        upgrade_message=str(upgrade.get("message") or ""),
        current=generation is not None and status.get("observedGeneration") == generation,
        applications={
            str(app): str((s or {}).get("status") or "") for app, s in active_apps.items()
        },
        serve_endpoints=int(status.get("numServeEndpoints") or 0),
        failures=tuple(failures),
        progress=tuple(progress),
    )


def _collect_messages(
    where: str, apps: Mapping[str, Any], failures: list[str], progress: list[str]
) -> None:
    """Append one line per application or deployment that has something to say."""
    for app in sorted(apps):
        app_status = apps[app] or {}
        status = str(app_status.get("status") or "")
        message = summarize_serve_message(str(app_status.get("message") or ""))
        app_failed = status in FAILED_STATUSES
        lines: list[tuple[bool, str]] = []
        if status != RUNNING and message:
            lines.append((app_failed, f"{where}application {app} is {status}: {message}"))
        deployments = app_status.get("serveDeploymentStatuses") or {}
        for deployment in sorted(deployments):
            deployment_status = deployments[deployment] or {}
            d_status = str(deployment_status.get("status") or "")
            d_message = summarize_serve_message(str(deployment_status.get("message") or ""))
            # Serve often repeats the deployment's message in the application's.
            if d_status == "HEALTHY" or not d_message or d_message in message:
                continue
            lines.append(
                (
                    app_failed or d_status in FAILED_STATUSES,
                    f"{where}deployment {app}/{deployment} is {d_status}: {d_message}",
                )
            )
        if app_failed and not lines:
            lines.append((True, f"{where}application {app} is {status}"))
        for failed, line in lines:
            (failures if failed else progress).append(line)
