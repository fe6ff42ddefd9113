"""The secure protocols (MPyC) and the MPyC runtime set-up: the only package that imports mpyc."""
