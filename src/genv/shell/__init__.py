"""Shell integration: the init script, the variables of an active environment, the shims."""
