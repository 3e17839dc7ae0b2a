"""Evaluation on the reward–KL frontier."""
