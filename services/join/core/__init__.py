"""Pure protocol core of riskmesh's secure inner join: no gRPC, no environment, no logging.

Modules (one job each):

- ``errors``      — the domain errors; messages name rows and columns, never values.
- ``ids``         — ID normalisation (ISO birth date | postal code).
- ``keys``        — X25519 + HKDF tag key agreement between the two owners; HMAC-SHA256 tags.
- ``columns``     — a numeric column with its declared range.
- ``fixedpoint``  — x' = round(x·2^f) + 2^(ℓ−1) encoding with range checks.
- ``packing``     — the slot layout and packing of a row's values into Paillier plaintexts.
- ``paillier``    — Paillier (g = N+1), randomness from a small subgroup, fast decryption (ADR 0007).
- ``parallel``    — chunking and a fork-safe process executor for CPU-bound work.
- ``matching``    — the helper's tag matching and minimum-intersection check.
- ``masking``     — the helper's per-slot masks and random permutation.
- ``shares``      — owners' decryption into additive shares; the share wire format.
- ``csvinput``    — reading and validating an owner's CSV.
- ``protocol``    — the whole join in memory, the data flow the gRPC services follow.

This package imports nothing heavy on purpose: worker processes import it.
"""
