"""The per-run MPC worker process: its link to the lasso server, frames, the mesh transport
for MPyC, and the registry of production programs."""
