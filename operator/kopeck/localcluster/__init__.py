"""kopeck.localcluster."""
