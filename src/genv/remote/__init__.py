"""``genv remote``: the same commands across several hosts over OpenSSH, with per-user limits
counted on all of them together (see docs/cluster.md)."""
