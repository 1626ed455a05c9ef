"""`python -m leader` runs the CLI."""

from leader.cli import main

main()
