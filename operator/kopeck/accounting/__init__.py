"""kopeck.accounting."""
