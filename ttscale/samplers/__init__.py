"""Samplers: where candidates come from."""
