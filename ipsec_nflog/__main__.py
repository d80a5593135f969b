import sys

from ipsec_nflog.cli.main import main

sys.exit(main())
