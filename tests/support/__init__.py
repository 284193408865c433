"""Shared test tools (fixtures and helpers); nothing here ships in the product package."""
