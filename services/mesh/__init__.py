"""Shared plumbing used by every riskmesh server: config, PKI, mTLS, identity,
authorisation, telemetry, health, reflection and server bootstrap. Written once."""
