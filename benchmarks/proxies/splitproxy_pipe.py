"""splitproxy with its stderr (the access log) going into a pipe, which ``cat`` drains into
/dev/null: the access log to a pipe rather than a file.

Benchmark only: the same command line as ``python -m splitproxy``. ``cat`` runs in the proxy's
session, so its CPU time counts with the proxy's.
"""

from __future__ import annotations

import os
import subprocess
import sys

from splitproxy.cli import main

read_end, write_end = os.pipe()
subprocess.Popen(["cat"], stdin=read_end, stdout=subprocess.DEVNULL)
os.close(read_end)
os.dup2(write_end, 2)  # sys.stderr writes to descriptor 2: now the pipe
os.close(write_end)
sys.exit(main())
