import sys

from sidecar.entry import main

sys.exit(main())
