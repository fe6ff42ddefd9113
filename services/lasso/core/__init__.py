"""Pure cores of the secure regression: public parameters, the solver plan, exact limb Gram products, party ids, input layout and share blocks (no grpc, no mpyc)."""
