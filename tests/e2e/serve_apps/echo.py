"""The Serve app of the e2e RayService (``import_path: echo:app``): found through PYTHONPATH,
where a container image would hold it. It says which Ray node answered, so a test can tell a
replacement worker from the one it deleted."""

from __future__ import annotations

import ray
from ray import serve
from starlette.requests import Request


@serve.deployment(num_replicas=1, ray_actor_options={"num_cpus": 0.1})
class Echo:
    async def __call__(self, request: Request) -> dict[str, str]:
        return {"app": "echo", "path": request.url.path, "node_ip": ray.util.get_node_ip_address()}


app = Echo.bind()
