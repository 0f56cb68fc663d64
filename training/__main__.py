"""``python -m training`` is the ``ganserve`` command; torchrun launches it this way (``torchrun -m training``)."""

from training.cli import main

if __name__ == "__main__":
    main()
