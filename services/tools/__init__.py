"""Dev and ops tools: the local launcher, network namespaces, the delaying relay, the dev PKI and code generation (never imported by a server)."""
