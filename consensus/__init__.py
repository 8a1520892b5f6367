"""meshnode consensus package."""
