"""IBM's MLP speculator (fms-extras), as vLLM loads it: model, loader and proposer."""
