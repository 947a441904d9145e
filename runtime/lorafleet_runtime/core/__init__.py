"""Pure runtime logic, no I/O and no Ray: what the ingress answers for an adapter
(``admission``), recent failures (``failures``), bounded metric labels (``labels``), the
replica's request errors (``errors``) and per-name locks (``locks``)."""
