"""What genv reads from (and does to) the running system: processes, users."""
