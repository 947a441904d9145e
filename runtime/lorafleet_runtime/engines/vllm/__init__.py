"""The vLLM engine: Ray Serve LLM's LLMServer with lorafleet's adapter path (``server``), a
vLLM worker extension for GPU-slot residency (``worker``), and the mapping from the contract
to Ray Serve LLM's LLMConfig (``config``)."""
