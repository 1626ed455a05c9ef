"""Baselines, one file each, all behind :class:`leader.models.base.MedModel`."""
