import sys

from dlforge.cli import main

sys.exit(main())
