"""cardiac_jax.

``cardiac_jax.load_model(path)`` and ``cardiac_jax.predict(adata, model, ...)``
import their modules (JAX, AnnData) on first use, so ``import cardiac_jax``
stays cheap.
"""


def load_model(path):
  """Loads an exported model folder (see ``cardiac_jax.export.load_model``)."""
  from cardiac_jax import export  # pylint: disable=g-import-not-at-top
  return export.load_model(path)


def predict(adata, model, **kwargs):
  """Annotates ``adata`` with ``model`` (see ``cardiac_jax.prediction.predict``)."""
  from cardiac_jax import prediction  # pylint: disable=g-import-not-at-top
  return prediction.predict(adata, model, **kwargs)
