"""Examples built on scalekit (not part of the installed package)."""
