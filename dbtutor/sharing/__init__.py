"""Sharing a run: its model card, one-file exports for other tools, pushing to the Hugging Face Hub."""
