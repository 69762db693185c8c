#!/usr/bin/env python3
"""Thin wrapper: ``python scripts/train.py ARGS`` is ``xpcnn train ARGS``."""

import sys

from xpcnn.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["train", *sys.argv[1:]]))
