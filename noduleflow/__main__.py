"""``python -m noduleflow`` is the ``noduleflow`` command."""
import sys

from .cli import main

sys.exit(main())
