"""`python -m dbtutor` = the `dbtutor` command."""
import sys

from .commands.cli import main

sys.exit(main())
