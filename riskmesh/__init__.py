"""riskmesh wire API: generated protobuf messages and gRPC stubs live in riskmesh.v1."""

__version__ = "0.1.0"
