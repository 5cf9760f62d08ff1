"""Session fixtures built once from the synthetic world (filled in by the world issue)."""
