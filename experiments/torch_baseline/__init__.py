"""PyTorch re-implementation of the 2020 prototype, trained on jaxseq's data pipeline for comparison.

Needs the ``torch`` extra (``pip install -e '.[torch]'``). Run from the repository root::

    python -m experiments.torch_baseline --config configs/FILE.yaml --workdir runs/torch --set train.num_steps=300

Modules: :mod:`.models` (the prototype's Autoencoder and MultilayerEncoder, logits out, flax layer names),
:mod:`.convert` (weights flax <-> torch), :mod:`.train` (loss, optimiser, loop, command line).
jaxseq never imports this package.
"""
