"""``python -m email_change``: the ``email-change`` command line."""

import sys

from email_change._cli import main

if __name__ == "__main__":
    sys.exit(main())
