"""Scoring a served model: ranks of the positive among sampled candidates, and metrics over them."""
