"""Infer tasks."""
