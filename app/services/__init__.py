"""Service functions: keyword-only, they own the rules and the transactions; routes stay thin."""
