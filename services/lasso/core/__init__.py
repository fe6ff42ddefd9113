"""Pure cores of the secure regression (no grpc, no mpyc): public parameters, the solver plan,
exact limb Gram products, party ids, the input layout and share blocks."""
