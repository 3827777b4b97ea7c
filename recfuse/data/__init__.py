"""The data contract: readers, validation, splits, id vocabularies, synthetic data."""
