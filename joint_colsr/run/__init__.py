"""The machinery every run shares: start-up checks, resolvers, callbacks (Lightning and Hydra),
checkpoints and resuming, preemption and SLURM requeue, host-sync recording, weight
averaging, atomic outputs.

Layer rule (``tests/run/test_layers.py``): modules here import the imaging core
(``color``, ``metrics``, ``viz``) and each other, never ``data/``, ``systems/``, ``nets/`` or a
command; ``nets/``, ``color`` and ``metrics`` never import this package.
"""
