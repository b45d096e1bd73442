"""Placeholder while the method is being written; registers nothing yet."""
