"""Scoring methods (active learning)."""
