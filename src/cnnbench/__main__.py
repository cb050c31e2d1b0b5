import sys

from cnnbench.cli import main

sys.exit(main())
