"""The home of lorafleet's adapter-aware request router (a ``ray.serve.request_router``
subclass over a pure placement policy).

Not built yet: every request goes through Ray Serve's stock router today, and the router
settings of a LoRAModel (``spec.router``) reach the runtime in the contract but nothing reads
them."""
