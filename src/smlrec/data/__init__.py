"""Interaction logs, periods, samplers and candidates."""
