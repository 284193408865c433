"""kopeck: a Kubernetes cost operator (shared core and operator)."""
