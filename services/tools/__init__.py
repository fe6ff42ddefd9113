"""Dev and ops tools: the local launcher, network namespaces, the delaying relay, the dev PKI,
code generation and the container tooling (never imported by a server)."""
