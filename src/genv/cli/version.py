"""``genv version``."""

import argparse

from genv import __version__


def add_arguments(parser: argparse.ArgumentParser, command: str) -> None:
    pass


def run(args: argparse.Namespace) -> int:
    print(__version__)
    return 0
