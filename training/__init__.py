"""flexrt.training: train FlexAvatar with bias sinks on the procedural head corpus (docs/TRAINING.md)."""
