"""``python -m vmm ARGS`` runs the ``vmm`` command, for an environment whose scripts folder is not on PATH.

    python -m vmm --version
"""
import sys

from vmm.cli import main

if __name__ == "__main__":  # not when collected by pytest --doctest-modules
    sys.exit(main())
