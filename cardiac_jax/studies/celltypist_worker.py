"""CellTypist's side of `celltypist_peer`: run ONLY by the CellTypist venv's python, never imported.

  <venv>/bin/python celltypist_worker.py train --input=train.h5ad --label_key=label \
      --model=model.pkl
  <venv>/bin/python celltypist_worker.py annotate --input=heldout.h5ad --model=model.pkl \
      --output=labels.csv

It imports nothing from cardiac_jax and reads only the h5ad it is given (raw
counts in X). Both commands first normalise as CellTypist's documentation asks
(``scanpy.pp.normalize_total(target_sum=1e4)`` then ``scanpy.pp.log1p``), so
that cost is CellTypist's. ``train``: ``celltypist.train(adata, labels,
n_jobs=...)`` with CellTypist's defaults otherwise (logistic regression, all
genes, ``check_expression``; ``--feature_selection`` for CellTypist's
``feature_selection=True``), then ``model.write``. ``annotate``:
``celltypist.annotate(adata, model=..., majority_voting=False)`` (the default
"best match" mode), the labels written as a two-column CSV (cell, label).
"""
import argparse
import json
import os
import time


def _read_normalised(path):
  import scanpy as sc  # pylint: disable=g-import-not-at-top
  adata = sc.read_h5ad(path)
  sc.pp.normalize_total(adata, target_sum=1e4)
  sc.pp.log1p(adata)
  return adata


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("command", choices=("train", "annotate"))
  parser.add_argument("--input", required=True)
  parser.add_argument("--model", required=True)
  parser.add_argument("--label_key", default="label")
  parser.add_argument("--output", default="")
  parser.add_argument("--n_jobs", type=int, default=os.cpu_count())
  parser.add_argument("--feature_selection", action="store_true",
                      help="celltypist.train(feature_selection=True): SGD on all genes, then "
                      "logistic regression on the union of each class's top 300 genes")
  parser.add_argument("--steps", default="", help="JSON file for the steps' wall seconds")
  args = parser.parse_args()
  import celltypist  # pylint: disable=g-import-not-at-top

  steps = {}
  t0 = time.perf_counter()
  adata = _read_normalised(args.input)
  steps["load_and_normalise"] = time.perf_counter() - t0
  t0 = time.perf_counter()
  if args.command == "train":
    model = celltypist.train(adata, labels=adata.obs[args.label_key].astype(str).to_numpy(),
                             n_jobs=args.n_jobs, feature_selection=args.feature_selection)
    model.write(args.model)
    steps["train"] = time.perf_counter() - t0
  else:
    result = celltypist.annotate(adata, model=args.model, majority_voting=False)
    steps["annotate"] = time.perf_counter() - t0
    labels = result.predicted_labels["predicted_labels"].astype(str)
    labels.rename("label").rename_axis("cell").to_csv(args.output)
  if args.steps:
    with open(args.steps, "w") as f:
      json.dump({"steps": steps, "celltypist": celltypist.__version__}, f)


if __name__ == "__main__":
  main()
