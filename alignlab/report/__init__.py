"""Pictures and pages of what a run made."""
