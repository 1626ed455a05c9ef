"""CLI commands, one module per area. Thin: parse options, call the library, print."""
