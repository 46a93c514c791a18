"""What happens inside training: gradient, update, noise and curvature instruments
(`dynamics=basic|noise|curvature`, experiments.dynamics.monitor) and their arithmetic
(experiments.dynamics.instruments)."""
