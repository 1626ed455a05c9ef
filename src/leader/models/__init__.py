"""Models behind one small interface (see :mod:`leader.models.base`)."""
