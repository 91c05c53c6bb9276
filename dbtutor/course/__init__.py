"""The notebooks' side: one profile of settings (toy or sd15), choices kept between notebooks, Colab and
Drive, widgets and plots. A notebook's `from dbtutor import course` gives the names below."""
from .choices import CHOICE_FILE  # noqa: F401
from .profiles import (PROFILES, Course, free_memory, identifier_report, sample_rows, settings, setup,  # noqa: F401
                       token_split)
from .quiet import no_progress_bars, quiet_libraries  # noqa: F401
from .run_folders import model_tag, run_config, run_dir, train_run  # noqa: F401
