"""Training: the trainer (epochs, validation, early stopping, checkpoints, resume)."""

from fedllmrec.train.trainer import Trainable, Trainer, TrainerConfig

__all__ = ["Trainable", "Trainer", "TrainerConfig"]
