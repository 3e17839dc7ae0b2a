"""`alignlab evaluate …`: one module per evaluation."""
