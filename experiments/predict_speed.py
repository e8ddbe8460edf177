"""Where ``predict``'s time goes at full size, and what fewer walks cost in labels.

  python experiments/predict_speed.py --cells=/tmp/full/cells.h5ad \
      --model=/tmp/full/model_run/model --out=docs/results/predict_speed

The study lives in cardiac_jax/studies/predict_speed.py (also runnable as
``python -m cardiac_jax.studies.predict_speed``); its docstring says how to make the
cells and the model.
"""
from absl import app
from absl import flags

from cardiac_jax.studies import predict_speed

if __name__ == "__main__":
  predict_speed.define_flags()
  flags.adopt_module_key_flags(predict_speed)
  app.run(predict_speed.main)
