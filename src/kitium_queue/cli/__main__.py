"""``python -m kitium_queue.cli``: the ``kitium-queue`` command."""

from . import main

main()
