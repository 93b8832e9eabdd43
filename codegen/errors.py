"""Re-export: user errors are defined in runtime.errors (the lowest layer)."""
from runtime.errors import UserError

__all__ = ["UserError"]
