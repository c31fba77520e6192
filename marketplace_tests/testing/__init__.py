"""Helpers shared by the tests; a test module imports these, never another test module."""
