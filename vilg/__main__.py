"""`python -m vilg ...` is the `vilg` command."""

from vilg.cli import main

raise SystemExit(main())
