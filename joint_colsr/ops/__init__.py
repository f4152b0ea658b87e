"""Tools for operators, not part of any run: a one-node SLURM cluster on this machine
(``python -m joint_colsr.ops.slurm_local``, ``make slurm-local``) and the offline wheelhouse
(``make wheelhouse``). Nothing in the package imports them."""
