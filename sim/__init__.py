"""meshnode sim package."""
