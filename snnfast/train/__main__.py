"""``python -m snnfast.train``: see :mod:`snnfast.train`."""
import sys

from .._cli import run_program
from . import main

sys.exit(run_program(main))
