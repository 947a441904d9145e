"""lorafleet runtime: the Ray Serve LLM application that serves one base model with many
LoRA adapters.

Layers, top to bottom (import-linter holds each to importing only what is below it):

- ``app``, ``local``: entry points (Ray Serve's application builder; `lorafleet serve`'s
  local runner).
- ``ingress``, ``engines``, ``router``: bound to Ray Serve and the engines. ``engines/vllm``
  is the vLLM engine (the LLM replica, its worker extension, its LLMConfig); a second engine
  is a sibling package. ``router`` is where lorafleet's request router lives.
- ``metrics``: Prometheus metrics through Ray's metrics agent.
- ``adapters``: adapter I/O: the catalog index reader, remote adapter files, the local disk
  cache.
- ``core``: pure runtime logic: admission, failure memory, bounded metric labels, errors,
  per-name locks.

Everything rests on ``lorafleet_api`` (the contract, the index format, names)."""
