import sys

from negclip.cli import main

sys.exit(main())
