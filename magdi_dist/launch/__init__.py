"""Ray wiring: embedded or remote Ray sessions, the Ray Train launcher (TorchTrainer + DeepSpeed) and
Ray job submission. Knows the training entry point, not the model internals."""
