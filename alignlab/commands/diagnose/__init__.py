"""`alignlab diagnose …`: one module per diagnostic."""
