"""`python -m alignlab …` (and `torchrun -m alignlab …`) is the `alignlab` command."""

import sys

from alignlab.cli import main

sys.exit(main())
