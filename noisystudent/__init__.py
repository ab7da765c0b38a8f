"""noisystudent: Noisy Student self-training and knowledge distillation of image classifiers."""

__version__ = "0.1.0"
