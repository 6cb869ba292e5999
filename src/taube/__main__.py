"""``python -m taube``: the ``taube`` command."""

from .cli import main

main(prog_name="taube")
