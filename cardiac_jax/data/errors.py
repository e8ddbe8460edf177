"""Errors raised by the data layer."""
from __future__ import annotations


class DataError(ValueError):
  """Input data is malformed or inconsistent with the config.

  A ``ValueError`` subclass so callers that already catch ``ValueError`` keep
  working; the message names the problem and the fix.
  """
