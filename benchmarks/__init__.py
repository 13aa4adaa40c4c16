"""The benchmarks: the scripts that measure amr_jax (speed, memory, precision, and the FG-NET comparisons of the
losses, backbones and head starts whose reports are in ``benchmarks/results/``), the modules they share
(``timing``, ``frozen_backbone``) and the PyTorch twins they and the tests time and compare against
(``torch_models``, ``torch_losses``). Each script is a module run from the repository root, e.g.
``python -m benchmarks.speed --quick``; ``--help`` gives its flags.
"""
