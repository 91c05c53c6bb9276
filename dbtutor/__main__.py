"""`python -m dbtutor` = the `dbtutor` command."""
import sys

from .cli import main

sys.exit(main())
