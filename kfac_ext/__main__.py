import sys

from kfac_ext.cli import main

sys.exit(main())
