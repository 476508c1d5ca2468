"""Developer tools (not shipped in the wheel): the demo driver behind ``make demo``."""
