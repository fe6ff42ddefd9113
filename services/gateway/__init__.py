"""The gateway: study lifecycle at one organisation (see README.md)."""
