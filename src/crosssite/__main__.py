"""`python -m crosssite` (also what `torchrun -m crosssite` runs)."""

import sys

from .cli import main

sys.exit(main())
