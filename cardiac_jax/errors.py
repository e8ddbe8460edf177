"""Errors raised by the training core (the data layer's are in ``data/errors.py``)."""
from __future__ import annotations


class ConfigError(ValueError):
  """The config asks for something that cannot work.

  A ``ValueError`` subclass so callers that already catch ``ValueError`` keep
  working; the message names the field, the problem and the fix.
  """


class CheckpointError(RuntimeError):
  """No usable checkpoint where one was expected (the message says what to run)."""
