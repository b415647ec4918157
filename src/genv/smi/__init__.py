"""The nvidia-smi an environment sees: its attached devices, its own processes, its memory."""
