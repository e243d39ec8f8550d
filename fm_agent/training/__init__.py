"""Behaviour cloning: the training loop and the train job."""
