"""The relay's test suite: unit/ (no servers), integration/ (real services), faults/ (kills)."""
