"""Every registered method; importing this package registers them all."""

from noisystudent.distill.methods import fitnet, hinton, noisy_student, supervised  # noqa: F401
