"""Engines: one subpackage per inference engine behind the same ingress, catalog index,
adapter cache, errors and metrics. ``vllm`` is the vLLM engine (Ray Serve LLM's LLMServer);
a second engine (transformers + PEFT) becomes a sibling package."""
