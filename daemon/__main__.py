import sys

from inferd.daemon.cli import main

sys.exit(main())
