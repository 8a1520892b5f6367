"""meshnode node package."""
