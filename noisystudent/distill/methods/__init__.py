"""Every registered method; importing this package registers them all."""

from noisystudent.distill.methods import at, fitnet, fsp, hinton, noisy_student, rkd, sp, supervised  # noqa: F401
from noisystudent.distill.methods import stpm  # noqa: F401,E402  (anomaly detection: noisystudent.anomaly)
from noisystudent.distill.methods import dml  # noqa: F401,E402  (online: a cohort of students)
from noisystudent.distill.methods import bss, one  # noqa: F401,E402  (adversarial samples; a native ensemble)
from noisystudent.distill.methods import byot  # noqa: F401,E402  (self-distillation: heads on earlier stages)
