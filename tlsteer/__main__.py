"""``python -m tlsteer``: the same console command as ``tlsteer`` (runs the demo by default)."""

from tlsteer.cli import main

raise SystemExit(main())
