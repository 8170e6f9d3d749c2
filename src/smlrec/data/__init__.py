"""Interaction logs, periods, samplers and candidates."""

from . import formats  # noqa: F401,E402  registers the yelp and adressa readers
