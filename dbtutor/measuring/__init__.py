"""Measuring a model: the paper's metrics, the course's measuring stick, the encoders and prompts they use."""
