"""The ``cronium`` command line: the composition root of the service."""
