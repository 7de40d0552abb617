"""What every benchmark records beside its numbers: the machine it ran on (the trainer's record)."""

from __future__ import annotations

from fedllmrec.train.trainer import machine

__all__ = ["machine"]
