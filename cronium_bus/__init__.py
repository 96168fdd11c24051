"""Cronium execution bus: event types, the bus client, settings and the command line."""

__version__ = "0.1.0"
