"""The n-gram proposer's device drafter: prompt lookup as the first kernel of a captured verify graph. Imports
torch (and triton for the fast path) only when the engine asks for the drafter."""
