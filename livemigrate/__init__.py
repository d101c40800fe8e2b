"""livemigrate: no-downtime DynamoDB data migrations (core package shared by both engines)."""

__version__ = "0.1.0"
