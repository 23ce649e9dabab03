"""Training heads on data the target generates itself."""
