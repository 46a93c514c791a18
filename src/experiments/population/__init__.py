"""Populations: several runs that share every batch, trained as one vectorised computation in one
Lightning fit (hydra/launcher=vectorized), each still leaving its own complete run directory."""
