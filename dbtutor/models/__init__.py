"""The model: loading and checking a pipeline, sampling, LoRA, precision, GPU memory, SD v1.5's shapes."""
