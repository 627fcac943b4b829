"""``python -m bench``: run the whole benchmark (``--help`` for options)."""

from bench.run import main

raise SystemExit(main())
