"""The ledger schema as SQL, for people and for migrations."""
