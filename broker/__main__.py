"""`python -m broker`: the `smsdora` command line."""

from broker.cli import main

raise SystemExit(main())
