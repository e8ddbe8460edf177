"""Errors raised by the training core."""
from __future__ import annotations


class ConfigError(ValueError):
  """The config asks for something that cannot work.

  A ``ValueError`` subclass so callers that already catch ``ValueError`` keep
  working; the message names the field, the problem and the fix.
  """
