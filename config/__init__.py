"""Typed configuration and the vocabulary every layer shares (errors, tensors)."""
