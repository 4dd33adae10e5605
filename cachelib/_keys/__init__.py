"""Keys: the canonical hash of values, the identity of code, and the key of a call."""
