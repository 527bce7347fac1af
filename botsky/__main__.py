"""``python -m botsky`` is the ``botsky`` command."""

from botsky.cli import main

main()
