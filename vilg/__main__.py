"""`python -m vilg ...` is the `vilg` command."""

from vilg.app.cli import main

raise SystemExit(main())
