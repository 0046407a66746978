"""`python -m sempt_cli` is the `sempt` command."""

from sempt_cli.cli.app import main

main()
