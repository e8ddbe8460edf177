"""Studies: the model against baselines, ablations, benchmarks (front doors in experiments/)."""
