"""HTTP ingress: every node serves the replicated routes on ``--http HOST:PORT`` (docs/DAEMON.md)."""
