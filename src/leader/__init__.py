"""leader: medication recommendation distilled from a large language model (LEADER)."""

__version__ = "0.1.0"
