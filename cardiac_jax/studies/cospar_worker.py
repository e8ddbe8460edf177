"""CoSpar's side of `cospar_peer`: run ONLY by the CoSpar venv's python, never imported.

  <venv>/bin/python cospar_worker.py --input=in.npz --params=params.json --output=out.npz

It sees only what `cospar_peer.run_cospar` wrote: raw counts, time and state
labels, and the clone matrix with the held-out clones' barcodes already removed.
It imports nothing from cardiac_jax (the venv does not hold it) and uses only
the pinned stack of that venv (cospar 0.5.0, anndata 0.10, scanpy 1.10).

Steps (CoSpar's own preprocessing and API):
  1. ``cs.pp.initialize_adata_object`` (counts, X_clone, time_info, state_info),
     time order set with ``cs.hf.update_time_ordering``;
  2. ``cs.pp.get_highly_variable_genes`` and ``cs.pp.get_X_pca`` (CoSpar defaults:
     counts per 1e4, v-score 85th percentile, 40 PCs); X_emb = the first two PCs
     (only CoSpar's plots read it; UMAP would cost time and change nothing here);
  3. the map from every early day to the fate day: ``cs.tmap.
     infer_Tmap_from_multitime_clones(later_time_point=fate_day, ...)`` (method
     "multitime") or ``cs.tmap.infer_Tmap_from_clonal_info_alone(...)`` ("clonal");
  4. ``cs.tl.fate_map(selected_fates=fate_classes, map_backward=True,
     method=fate_method)`` read on every early cell.
Writes out.npz: obs_names and day of the early cells and their fate-map values
(n_early, n_fates), plus the wall seconds of each step in a JSON string.
"""
import argparse
import json
import os
import time

import numpy as np


def _read_input(path):
  import anndata  # pylint: disable=g-import-not-at-top
  import scipy.sparse as sp  # pylint: disable=g-import-not-at-top
  z = np.load(path, allow_pickle=False)
  counts = sp.csr_matrix((z["x_data"], z["x_indices"], z["x_indptr"]), shape=tuple(z["x_shape"]))
  x_clone = sp.csr_matrix((z["c_data"], z["c_indices"], z["c_indptr"]),
                          shape=tuple(z["c_shape"]))
  adata = anndata.AnnData(X=counts.astype(np.float32))
  adata.obs_names = list(z["obs_names"])
  adata.var_names = list(z["var_names"])
  return adata, x_clone, z["time"].astype(str), z["state"].astype(str)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--input", required=True)
  parser.add_argument("--params", required=True)
  parser.add_argument("--output", required=True)
  args = parser.parse_args()
  with open(args.params) as f:
    params = json.load(f)
  import cospar as cs  # pylint: disable=g-import-not-at-top

  steps = {}
  t0 = time.perf_counter()
  workdir = params["workdir"]
  cs.settings.data_path = os.path.join(workdir, "cospar_data")
  cs.settings.figure_path = os.path.join(workdir, "cospar_figure")
  cs.settings.verbosity = int(params.get("verbosity", 1))
  adata, x_clone, time_info, state_info = _read_input(args.input)
  adata = cs.pp.initialize_adata_object(
      adata=adata, X_clone=x_clone, time_info=time_info, state_info=state_info,
      data_des=params.get("data_des", "cardiac_jax"))
  cs.hf.update_time_ordering(adata, updated_ordering=list(params["time_order"]))
  if list(adata.uns["time_ordering"]) != list(params["time_order"]):   # it only logs a mismatch
    raise SystemExit(f"CoSpar kept the time order {list(adata.uns['time_ordering'])}, not "
                     f"{params['time_order']}: pass the order of exactly the days present")
  cs.pp.get_highly_variable_genes(adata, **params["hvg"])
  cs.pp.get_X_pca(adata, n_pca_comp=int(params["n_pcs"]))
  adata.obsm["X_emb"] = np.asarray(adata.obsm["X_pca"][:, :2])
  steps["preprocess_s"] = time.perf_counter() - t0

  t0 = time.perf_counter()
  early, fate_day = list(params["early_days"]), params["fate_day"]
  tmap = params["tmap"]
  if params["method"] == "multitime":
    adata_map = cs.tmap.infer_Tmap_from_multitime_clones(
        adata, clonal_time_points=early + [fate_day], later_time_point=fate_day,
        smooth_array=list(tmap["smooth_array"]), CoSpar_KNN=int(tmap["knn"]),
        sparsity_threshold=float(tmap["sparsity_threshold"]),
        intraclone_threshold=float(tmap["intraclone_threshold"]),
        trunca_threshold=list(tmap["trunca_threshold"]), max_iter_N=int(tmap["max_iter_N"]),
        epsilon_converge=float(tmap["epsilon_converge"]),
        save_subset=all(int(s) % 5 == 0 for s in tmap["smooth_array"]), compute_new=True)
    source = "transition_map"
  elif params["method"] == "clonal":
    adata_map = cs.tmap.infer_Tmap_from_clonal_info_alone(
        adata, method="naive", clonal_time_points=early + [fate_day],
        later_time_point=fate_day)
    source = "clonal_transition_map"
  else:
    raise SystemExit(f"unknown method {params['method']!r}")
  steps["tmap_s"] = time.perf_counter() - t0

  t0 = time.perf_counter()
  fates = list(params["fate_classes"])
  cs.tl.fate_map(adata_map, selected_fates=fates, source=source, map_backward=True,
                 method=params["fate_method"], force_run=True)
  values = np.stack([np.asarray(adata_map.obs[f"fate_map_{source}_{f}"], np.float64)
                     for f in fates], axis=1)
  day = np.asarray(adata_map.obs["time_info"]).astype(str)
  keep = np.isin(day, early)
  steps["fate_map_s"] = time.perf_counter() - t0
  np.savez(args.output, obs_names=np.asarray(adata_map.obs_names).astype(str)[keep],
           day=day[keep], values=values[keep], steps=json.dumps(steps),
           versions=json.dumps({"cospar": cs.__version__}))


if __name__ == "__main__":
  main()
