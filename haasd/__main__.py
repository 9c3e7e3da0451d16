"""``python -m haasd`` is the ``haasd`` command."""

from haasd.cli import main

raise SystemExit(main())
