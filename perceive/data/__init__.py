"""Datasets in the paper's layout, and the number-card task generator."""
