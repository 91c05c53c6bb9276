"""The toy world: procedural renderer, subjects, tokenizer, base-model architectures, pretraining and the judge."""
