"""`alignlab redteam …`: one module per attack (their shared options: `alignlab.commands.options`)."""
