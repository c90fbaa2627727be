from __future__ import annotations

from splitproxy.cli import main

raise SystemExit(main())
