"""cardiac_jax."""
