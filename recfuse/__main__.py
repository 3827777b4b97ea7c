import sys

from recfuse.cli.main import main

sys.exit(main())
