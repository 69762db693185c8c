"""Benchmarks: prints a table and writes JSON (see xpcnn/bench/ and BENCHMARKS.md)."""

from xpcnn.bench import main

raise SystemExit(main())
