"""``python -m training``: the training commands of ``ganserve`` (train, export, ...); torchrun launches training
this way (``torchrun -m training train``). The whole command, with the release stage's, is ``python -m release``."""

from training.cli import main

if __name__ == "__main__":
    main()
