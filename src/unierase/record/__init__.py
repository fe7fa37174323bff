"""The records of a round, below the methods that make them: the manifest, the hash-chained ledger,
the exact revert data (deltas), the edit-state file format, what every round does around its method
(rounds) and the trail that reads them back (history, verify, revert)."""
