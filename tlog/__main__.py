"""``python -m tlog`` is ``tlog``."""

from tlog.cli import main

main()
