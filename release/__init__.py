"""ganserve's release stage: the model store (registry), the retrain job and the gate's reports on disk.

``training/`` is the training run and ``training/judging/`` judges and writes nothing; ``release/`` alone changes
the store. It may import both and the service's contract modules; nothing imports it but the CLIs.
"""
