"""Heads on the target's hidden states for tokenleap: EAGLE / EAGLE-3, the MLP speculator and MTP."""
