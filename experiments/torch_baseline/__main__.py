"""``python -m experiments.torch_baseline``: see :mod:`experiments.torch_baseline.train`."""

import sys

from experiments.torch_baseline.train import main

if __name__ == "__main__":
    sys.exit(main())
