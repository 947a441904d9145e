"""kopf handlers: decorators and glue only. Importing this package registers them."""

from lorafleet_operator.handlers import lifecycle, loramodel, rayservice

__all__ = ["lifecycle", "loramodel", "rayservice"]
