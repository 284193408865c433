"""kopeck.operator."""
