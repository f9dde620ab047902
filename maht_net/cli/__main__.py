"""``python -m maht_net.cli``: the ``maht-net`` command."""

import sys

from maht_net.cli import main

sys.exit(main())
