"""Benchmarks: prints a table and writes JSON (see xpcnn/bench.py and BENCHMARKS.md)."""

from xpcnn.bench import main

raise SystemExit(main())
