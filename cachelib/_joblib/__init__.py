"""joblib's interface: ``Memory``, ``MemorizedFunc`` and shelved results, built on ``Cache``."""
