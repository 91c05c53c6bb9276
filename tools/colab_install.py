"""Colab: install the course from the folder this script is in, once per runtime, keeping Colab's own torch.

Each notebook's first cell runs it (runpy.run_path, in the notebook's own Python) once the course is in
/content/dbtutor. `pip install -e` with the torch already there pinned, so pip never swaps Colab's CUDA build for
another (a download of several GB); then the running kernel sees the package without a restart. Run again in the
same runtime, it does nothing: the package is already imported from here.
"""
import importlib.metadata
import importlib.util
import subprocess
import sys
from pathlib import Path

HOME = str(Path(__file__).resolve().parent.parent)

spec = importlib.util.find_spec("dbtutor")
if spec is None or not str(spec.origin).startswith(HOME + "/"):
    torch_pin = f"torch=={importlib.metadata.version('torch')}"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "-e", HOME, torch_pin], check=True)
    sys.path.insert(0, HOME)
    print(f"dbtutor installed from {HOME} ({torch_pin} kept)")
