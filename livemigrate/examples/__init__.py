"""Example migrations shipped with livemigrate (used by the demo and the tests)."""
