"""Studies on data the project did not generate (external test beds, peers); never core."""
