"""An external test bed: a branching time course from a simulator we did not write.

  pip install -e ".[external]"
  python experiments/external_testbed.py --out=/work/data/ext_a.h5ad --tree=a --seed=0
  python -m cardiac_jax.main --config=configs/scale1.py $(python -c \
      "import json;print(' '.join(json.load(open('/work/data/ext_a.json'))['overrides']))")

The study lives in cardiac_jax/studies/external_testbed.py (also runnable as
``python -m cardiac_jax.studies.external_testbed``).
"""
from absl import app
from absl import flags

from cardiac_jax.studies import external_testbed

if __name__ == "__main__":
  external_testbed.define_flags()
  flags.adopt_module_key_flags(external_testbed)   # --helpshort lists the study's flags
  app.run(external_testbed.main)
