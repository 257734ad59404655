"""flexrt.corpus: a procedural head corpus for training FlexAvatar with bias sinks (see docs/TRAINING.md)."""
