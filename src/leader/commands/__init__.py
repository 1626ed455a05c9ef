"""CLI commands, one module per area. Thin: parse options, call the library, print."""

from rich.console import Console

from leader.distributed import is_main

# under torchrun / accelerate launch every process runs the command: rank 0 alone prints
console = Console(quiet=not is_main())
