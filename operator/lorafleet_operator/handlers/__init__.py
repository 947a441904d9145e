"""kopf handlers: decorators and glue only. Importing this package registers them."""

from lorafleet_operator.handlers import adaptercatalog, lifecycle, loramodel, rayservice

__all__ = ["adaptercatalog", "lifecycle", "loramodel", "rayservice"]
