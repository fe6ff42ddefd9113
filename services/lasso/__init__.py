"""Secure regression (see README.md)."""
