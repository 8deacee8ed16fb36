import sys

from effplug.cli import main

sys.exit(main())
