"""The ``bank`` command: tools for people operating and measuring the bank."""
