"""Showing results: plots and widgets."""
