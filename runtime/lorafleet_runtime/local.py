"""Run the Serve application on a local Ray instance: what `lorafleet serve` starts in a child
process (the operator package never imports ray). Usage:

    python -m lorafleet_runtime.local ARGS.json [--host H] [--port P] [--num-cpus N]

``ARGS.json`` holds the RuntimeArgs (``to_serve_args()``). Blocks until interrupted."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any, Final

from lorafleet_api.names import SERVE_APPLICATION_NAME

# Ray Serve LLM deadlocks when the engine's placement group takes every logical CPU (the
# ingress never schedules): declare more logical CPUs than a small machine has (FACTS.md).
MIN_LOGICAL_CPUS: Final = 8
# Passed on to the replicas: storage endpoints and credentials (standard SDK variables).
FORWARDED_ENV: Final = (
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "STORAGE_EMULATOR_HOST",
    "GOOGLE_APPLICATION_CREDENTIALS",
    "KUBECONFIG",
    "LORAFLEET_ADAPTER_CACHE",
    "HF_TOKEN",
)


def run(args_path: Path, host: str, port: int, num_cpus: int) -> None:
    import ray
    from ray import serve

    from lorafleet_runtime.app import build_app

    args = json.loads(args_path.read_text())
    env_vars = {name: os.environ[name] for name in FORWARDED_ENV if name in os.environ}
    ray.init(
        num_cpus=max(num_cpus, MIN_LOGICAL_CPUS),
        runtime_env={"env_vars": env_vars},
        include_dashboard=False,
    )
    serve.start(http_options={"host": host, "port": port})
    serve.run(build_app(args), name=SERVE_APPLICATION_NAME, route_prefix="/")
    print(f"Serving on http://{host}:{port}/v1", flush=True)  # noqa: T201
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        # A timed wait, so the signal handler gets to run in the main thread.
        while not stop.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        serve_shutdown: Any = serve.shutdown
        serve_shutdown()
        ray.shutdown()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lorafleet_runtime.local")
    parser.add_argument("args", type=Path)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--num-cpus", type=int, default=os.cpu_count() or 1)
    options = parser.parse_args(argv)
    run(options.args, options.host, options.port, options.num_cpus)
    return 0


if __name__ == "__main__":
    sys.exit(main())
