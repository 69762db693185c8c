"""``python -m xpcnn.bench``: the benchmark command (and its worker processes)."""

from .runner import main

raise SystemExit(main())
