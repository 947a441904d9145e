"""metav1.Condition helpers, cert-manager style: ``lastTransitionTime`` moves only when the
status flips, so `kubectl get` shows how long something has been (not) Ready."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Literal

ConditionStatus = Literal["True", "False", "Unknown"]

# metav1.Condition allows 32768; status is read in terminals, and etcd pays for every byte.
MAX_MESSAGE_LENGTH = 1024


def format_time(moment: datetime) -> str:
    """RFC 3339 in UTC with seconds, as Kubernetes writes timestamps."""
    if moment.tzinfo is None:
        raise ValueError("timestamps must be timezone-aware")
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(text: str) -> datetime | None:
    """The moment a Kubernetes timestamp names, or None when it is not one."""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def bounded(message: str, limit: int = MAX_MESSAGE_LENGTH) -> str:
    """``message`` cut to ``limit`` characters, marked when cut."""
    return message if len(message) <= limit else message[: limit - 3] + "..."


def find_condition(
    conditions: Sequence[Mapping[str, Any]] | None, condition_type: str
) -> Mapping[str, Any] | None:
    for condition in conditions or ():
        if condition.get("type") == condition_type:
            return condition
    return None


def is_true(conditions: Sequence[Mapping[str, Any]] | None, condition_type: str) -> bool:
    condition = find_condition(conditions, condition_type)
    return condition is not None and condition.get("status") == "True"


def set_condition(
    conditions: Sequence[Mapping[str, Any]] | None,
    *,
    condition_type: str,
    status: ConditionStatus,
    reason: str,
    message: str,
    observed_generation: int,
    now: datetime,
) -> list[dict[str, Any]]:
    """A copy of ``conditions`` with ``condition_type`` set; other conditions keep their place.

    ``lastTransitionTime`` is kept when the status did not change, even if reason or message
    did; a new condition, or a flip, takes ``now``."""
    previous = find_condition(conditions, condition_type)
    if previous is not None and previous.get("status") == status:
        transition = str(previous.get("lastTransitionTime") or format_time(now))
    else:
        transition = format_time(now)
    updated = {
        "type": condition_type,
        "status": status,
        "reason": reason,
        "message": bounded(message),
        "observedGeneration": observed_generation,
        "lastTransitionTime": transition,
    }
    result = [dict(condition) for condition in conditions or ()]
    for index, condition in enumerate(result):
        if condition.get("type") == condition_type:
            result[index] = updated
            return result
    result.append(updated)
    return result
