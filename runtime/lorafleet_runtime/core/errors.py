"""Errors a replica raises for an adapter request; the ingress turns them into OpenAI-style
error bodies with the same status. Importable without ray."""

from __future__ import annotations


class AdapterRequestError(Exception):
    """An adapter request that cannot be served: 404 unknown, 422 invalid or incompatible,
    503 storage failure (with the reason, never a 404)."""

    def __init__(self, status_code: int, reason: str, message: str) -> None:
        super().__init__(status_code, reason, message)
        self.status_code = status_code
        self.reason = reason
        self.message = message

    def __str__(self) -> str:
        return self.message


def find_adapter_error(err: BaseException) -> AdapterRequestError | None:
    """The AdapterRequestError inside ``err``: Ray wraps exceptions raised in a replica
    (RayTaskError keeps the original as ``cause``)."""
    seen: BaseException | None = err
    for _ in range(4):
        if seen is None:
            return None
        if isinstance(seen, AdapterRequestError):
            return seen
        seen = getattr(seen, "cause", None) or seen.__cause__
    return None
