"""``python -m vmm.data.synthetic OUT_DIR ...``: write a corpus (see :func:`vmm.data.synthetic.corpus.main`)."""
import sys

from vmm.data.synthetic.corpus import main

if __name__ == "__main__":
    sys.exit(main())
