import sys

from brainkernels.cli import main

sys.exit(main())
