"""Commands of teelab.enclave_runtime (filled in below)."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    pass
