"""Engines: one subpackage per inference engine behind the same ingress, catalog index,
adapter cache, errors and metrics (``engine.kind`` in the LoRAModel picks one). ``vllm`` is the
vLLM engine (Ray Serve LLM's LLMServer); ``peft`` is transformers + PEFT with mixed-adapter
batches (one forward pass for requests of different adapters)."""
