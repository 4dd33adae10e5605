"""Entries: the cache's policy above any store (names, envelope, signatures, limits, statistics)."""
