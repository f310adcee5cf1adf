"""``python -m kitium_queue``: the ``kitium-queue`` command line."""

from __future__ import annotations

from .cli import main

if __name__ == "__main__":
    main(prog_name="kitium-queue")
