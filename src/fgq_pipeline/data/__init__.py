"""Datasets stored as npz splits and the Lightning data modules that serve them."""

from fgq_pipeline.data.digits import DigitsDataModule, prepare_digits

__all__ = ["DigitsDataModule", "prepare_digits"]
