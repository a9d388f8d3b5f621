"""Business logic: pure decisions plus calls to adapters passed in."""
