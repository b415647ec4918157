"""``genv top``: a live view of the GPUs, environments and users, and what the enforcer did."""
