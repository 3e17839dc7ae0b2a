"""`alignlab data …`: commands that prepare training data, one module each."""
