"""riskmesh services: shared plumbing (mesh), the join, the lasso, the gateway and the CLI."""
