"""lorafleet runtime: the Ray Serve LLM application that serves one base model with many
LoRA adapters. Importable without ray or vllm (the operator reads its contract)."""
