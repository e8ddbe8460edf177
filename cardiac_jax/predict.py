"""Command line: annotate an .h5ad with an exported model.

  python -m cardiac_jax.predict --model=runs/scale1/model --input=new.h5ad \
      --output=new_annotated.h5ad [--time_key=diffday] [--counts_layer=counts] [--n_walks=8]

Writes the annotated h5ad and ``predictions.csv`` next to it (both atomically;
nothing is written when prediction fails). The Python API is
``cardiac_jax.predict(adata, model, ...)`` (``cardiac_jax.prediction.predict``).
"""
from __future__ import annotations

import sys
import types

from cardiac_jax import prediction
from cardiac_jax.prediction import predict  # noqa: F401  (the API under this name too)


class _CallableModule(types.ModuleType):
  """Importing this module sets ``cardiac_jax.predict`` to the module, which would
  shadow the function ``cardiac_jax.predict``; calling the module calls it."""

  def __call__(self, *args, **kwargs):
    return prediction.predict(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule


def run(argv: list[str] | None = None) -> None:
  """Entry point (``python -m cardiac_jax.predict``, ``cardiac-jax predict``)."""
  from absl import app  # pylint: disable=g-import-not-at-top
  prediction.define_flags()
  app.run(prediction.main, argv=argv)


if __name__ == "__main__":
  run()
