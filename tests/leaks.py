"""Finding a secret in text that is not its own mail: the kit's finder, re-exported."""

from email_change.testing._leaks import leaked, numbers_in

__all__ = ["leaked", "numbers_in"]
