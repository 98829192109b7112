"""The ``trainctl`` command line."""
