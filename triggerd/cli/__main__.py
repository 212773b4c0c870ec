"""python -m triggerd.cli (the same as `python -m triggerd`)"""

import sys

from triggerd.cli import main

sys.exit(main())
