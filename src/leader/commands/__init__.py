"""CLI commands, one module per area. Thin: parse options, call the library, print."""

import os

from rich.console import Console

# under torchrun / accelerate launch every process runs the command: rank 0 alone prints
console = Console(quiet=int(os.environ.get("RANK", 0)) != 0)
