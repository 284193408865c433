"""kopeck.rightsizing."""
