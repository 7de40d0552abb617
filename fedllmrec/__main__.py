"""``python -m fedllmrec``: the command line."""

from fedllmrec.apps.cli import main

main()
