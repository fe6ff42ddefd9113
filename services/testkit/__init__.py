"""Test kit: synthetic data, the dealer of share matrices and plaintext / scikit-learn oracles
(tests and benchmarks only; never imported by a server)."""
