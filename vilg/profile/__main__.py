import sys

from vilg.profile import main

sys.exit(main())
