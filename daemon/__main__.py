"""`python -m inferd.daemon`: as the `inferd` command. `-m` puts the working directory first on
sys.path; the daemon never imports from it (a numpy.py lying there must not run), and neither do
its workers, which are sent this sys.path."""

import os
import sys

if not sys.flags.safe_path and sys.path and sys.path[0] in ("", os.getcwd()):
    del sys.path[0]

from inferd.daemon.cli import main  # noqa: E402

sys.exit(main())
