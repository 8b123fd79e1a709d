"""``python -m teelab.sealed_store.kbs serve|…``: the key broker's commands on their own."""

import sys

from teelab.sealed_store.kbs.cli import main

sys.exit(main())
