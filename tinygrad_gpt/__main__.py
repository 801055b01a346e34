"""`python -m tinygrad_gpt train|sample ...`: the same as the `tinygrad-gpt` command."""
import sys

from .cli import main

sys.exit(main())
