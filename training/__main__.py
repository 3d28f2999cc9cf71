"""``python -m eri.training ARGS`` runs ``eri train ARGS`` (what ``torchrun -m eri.training``
launches on every process)."""

import sys

from eri.training.cli import main

if __name__ == "__main__":
    sys.exit(main())
