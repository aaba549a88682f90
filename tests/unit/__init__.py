"""Fast tests that need no server: validation, budget maths, outcome classification."""
