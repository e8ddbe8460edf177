"""CellTypist beside cardiac_jax, same training and held-out cells (docs/results/celltypist.md).

  python3 -m venv /work/venv_ct && /work/venv_ct/bin/pip install -e ".[celltypist]"
  python experiments/celltypist_peer.py --beds=embedded --workdir=/work/ct \
      --embedded_heldout=/work/full/cells.h5ad --celltypist_python=/work/venv_ct/bin/python

The study lives in cardiac_jax/studies/celltypist_peer.py (also runnable as
``python -m cardiac_jax.studies.celltypist_peer``).
"""
from absl import app
from absl import flags

from cardiac_jax.studies import celltypist_peer

if __name__ == "__main__":
  celltypist_peer.define_flags()
  flags.adopt_module_key_flags(celltypist_peer)   # --helpshort lists the study's flags
  app.run(celltypist_peer.main)
