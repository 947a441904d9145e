"""lorafleet's shared API: what the operator and the runtime must agree on.

Both sides import this package and nothing of each other: the operator↔runtime contract
(``contract``), the catalog index format (``catalog_index``), resource names (``names``),
adapter and model naming (``naming``), and how storage credentials and failures are spelled
(``storage``). Pure: pydantic and the standard library only; ``storage_sdk`` (what an SDK
failure means, a GCS client's arguments) imports each SDK inside the function that needs it,
never at module level (import-linter and a unit test hold it to that)."""
