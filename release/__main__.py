"""``python -m release`` is the ``ganserve`` command."""

from release.cli import main

if __name__ == "__main__":
    main()
