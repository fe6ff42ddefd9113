"""One organisation's web console: Studies, Runs (live), Results and Audit pages for the
people who approve and run studies, served by `riskmesh-console` (services/console/server.py).
It talks only to its own organisation's gateway, over mTLS as spiffe://<org>/console."""
