"""Generated from proto/riskmesh/v1 by `make proto`. Do not edit."""
