"""meshnode plugins package."""
