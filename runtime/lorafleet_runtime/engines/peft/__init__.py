"""The transformers + PEFT engine: one base model, adapters in one PeftModel, concurrent
requests decoded together in one forward pass whose rows use different adapters.

Pure-ish core (no Ray): ``sampling`` (per-request sampling and stop strings), ``slots``
(which adapters are loaded, LRU, bounded by max_loras), ``batcher`` (the step-level batch),
``model`` (the PeftModel and mixed-adapter forward passes), ``engine`` (all of it behind one
object). Ray-bound: ``server`` (the Serve deployment behind lorafleet's ingress) and
``protocol`` (OpenAI requests and responses); ``config`` maps the contract to Ray Serve LLM."""
