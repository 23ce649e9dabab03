"""Training an EAGLE-3 head: data (the target's own answers and hidden states), the unrolled loss, the loop."""
