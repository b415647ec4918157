"""The pure domain: values that describe a machine and its environments, with no I/O."""
