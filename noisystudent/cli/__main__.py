"""``python -m noisystudent.cli``."""

from . import main

main()
