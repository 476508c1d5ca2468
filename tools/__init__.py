"""Developer tools (not shipped in the wheel): the demo driver behind ``make demo``, and the griffe extension
``make docs`` reads the docstrings with."""
