"""The benchmark behind ``bench/run.py``: this project against genv 1.4.3 (see bench/README.md)."""
