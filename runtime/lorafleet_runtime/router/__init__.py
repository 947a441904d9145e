"""lorafleet's adapter-aware request router.

- ``policy``: the pure placement policies (``lorafleet``, ``affinity``) and the replica-side
  frequency-aware eviction; ``bench/routing.py`` simulates these same classes.
- ``residency``: replica reports → the policy's view; the per-response tier marker.
- ``serve``: the Ray Serve ``RequestRouter`` subclass the LLM deployment is configured with
  (imports Ray: import it only where Ray runs).

See docs/routing.md."""
