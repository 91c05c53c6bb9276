"""The comparison notebook in a real JupyterLab, driven by headless Chromium: widgets render, plots show, buttons work."""
from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow                    # JupyterLab and Chromium: the full suite only
ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK = "notebooks/06_with_and_without_prior.ipynb"
CHROMIUM = "/usr/bin/chromium"
SCREENSHOTS = ROOT / "work" / "screenshots"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--disable-quic"]
# Small settings for the browser run, read by the notebook's parameters cell (DBTUTOR_NB_<NAME>); WORK in tmp.
NOTEBOOK_ENV = {"DBTUTOR_NB_MAX_STEPS": "4", "DBTUTOR_NB_NUM_REG_IMAGES": "4", "DBTUTOR_NB_SAMPLES_PER_PROMPT": "2",
                "DBTUTOR_NB_SAMPLER_STEPS": "4", "DBTUTOR_NB_SWEEP_WEIGHTS": "0,1", "DBTUTOR_NB_PRIOR_LOSS_WEIGHT": "1"}
NEW_WEIGHT = "0.5"  # typed into the prior_loss_weight slider before "retrain and redraw"
RUN_TIMEOUT = 600  # seconds for "Run All Cells" on the real notebook
LOAD_TIMEOUT = 180  # seconds for JupyterLab to load a notebook page
WIDGET_SELECTOR = ".widget-slider, .widget-hslider, .widget-text, .widget-button, .jupyter-widgets button"
STDERR = '.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]'


def _require_browser():
    """Skip when Chromium or playwright is missing locally; in CI (CI set) fail instead, the test must run there."""
    missing = []
    if not os.access(CHROMIUM, os.X_OK):
        missing.append(f"{CHROMIUM} (apt-get install chromium)")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        missing.append("the playwright package (pip install -e .[browser]; never `playwright install`)")
    if missing:
        reason = "browser test needs " + " and ".join(missing)
        if os.environ.get("CI"):
            pytest.fail(reason + " -- .ci/run must install them", pytrace=False)
        pytest.skip(reason)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _write_json(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1))


@pytest.fixture(scope="module")
def jupyterlab(tmp_path_factory):
    """A token-less JupyterLab on a free loopback port, root dir = the repo, all its state in tmp; yields its URL."""
    _require_browser()
    tmp = tmp_path_factory.mktemp("jupyterlab")
    settings = tmp / "settings"
    # no autosave: running cells must never write outputs into the committed notebooks; no news, no update checks
    _write_json(settings / "@jupyterlab" / "docmanager-extension" / "plugin.jupyterlab-settings", {"autosave": False})
    _write_json(settings / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings",
                {"fetchNews": "false", "checkForUpdates": False})
    _write_json(tmp / "config" / "jupyter_server_config.json",
                {"LabApp": {"news_url": None, "check_for_updates_class": "jupyterlab.NeverCheckForUpdate"}})
    env = {k: v for k, v in os.environ.items() if k != "MPLBACKEND"}  # a learner's kernel uses the inline backend
    env.update({"JUPYTER_CONFIG_DIR": str(tmp / "config"), "JUPYTER_RUNTIME_DIR": str(tmp / "runtime"),
                "JUPYTER_DATA_DIR": str(tmp / "data"), "JUPYTERLAB_WORKSPACES_DIR": str(tmp / "workspaces"),
                "JUPYTERLAB_SETTINGS_DIR": str(settings), "IPYTHONDIR": str(tmp / "ipython"),
                "OMP_NUM_THREADS": env.get("OMP_NUM_THREADS", "1"), "PYTHONUNBUFFERED": "1"})
    env.update(NOTEBOOK_ENV)
    env["DBTUTOR_NB_WORK"] = str(tmp / "notebook-work")
    port = _free_port()
    cmd = [sys.executable, "-m", "jupyter", "lab", "--no-browser", "--ServerApp.ip=127.0.0.1",
           f"--ServerApp.port={port}", "--ServerApp.port_retries=0", "--ServerApp.token=", "--ServerApp.password=",
           "--ServerApp.disable_check_xsrf=True", f"--ServerApp.root_dir={ROOT}",
           f"--FileCheckpoints.checkpoint_dir={tmp / 'checkpoints'}"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        cmd.append("--allow-root")
    log = open(tmp / "jupyterlab.log", "w")
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"JupyterLab exited with {proc.returncode}:\n{(tmp / 'jupyterlab.log').read_text()}")
            with contextlib.suppress(OSError):
                with urllib.request.urlopen(url + "/api/status", timeout=5) as r:
                    if r.status == 200:
                        break
            if time.monotonic() > deadline:
                raise RuntimeError(f"JupyterLab did not answer in 120 s:\n{(tmp / 'jupyterlab.log').read_text()}")
            time.sleep(0.5)
        yield url
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)  # its own session: the server and the kernels it started
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        log.close()
        print("JupyterLab log (end):", (tmp / "jupyterlab.log").read_text()[-3000:], sep="\n")  # shown on failure
        shutil.rmtree(tmp / "notebook-work", ignore_errors=True)  # trained runs: hundreds of MB


@pytest.fixture
def page(jupyterlab, tmp_path):
    """A fresh headless Chromium (Debian's, driven by playwright, new user-data dir) with one page."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        context = p.chromium.launch_persistent_context(str(tmp_path / "chromium-profile"), executable_path=CHROMIUM,
                                                       headless=True, args=CHROMIUM_ARGS,
                                                       viewport={"width": 1400, "height": 1000})
        try:
            pg = context.pages[0] if context.pages else context.new_page()
            pg.set_default_timeout(60_000)
            problems: list[str] = []
            pg.on("pageerror", lambda e: problems.append(f"page error: {e}"))
            pg.page_errors = problems
            console: list[str] = []  # printed, so shown when a test fails (JupyterLab logs harmless ones too)
            pg.on("console", lambda m: console.append(m.text[:300]) if m.type == "error" else None)
            yield pg
        finally:
            context.close()
            if console:
                print("browser console errors:", *console, sep="\n")


# ---------------------------------------------------------------- driving JupyterLab like a person


def open_notebook(page, url: str, relpath: str) -> None:
    """Open the notebook and wait until its kernel (the one named in its metadata) has started and is idle."""
    # ?reset: a fresh workspace, no tabs of an earlier test. JupyterLab's first load (several MB of scripts) has
    # taken over 60 s on 2 busy cores, so the page load gets 3 minutes; the rest keeps the 60 s default
    page.goto(f"{url}/lab/tree/{relpath}?reset", timeout=LOAD_TIMEOUT * 1000)
    page.locator(".jp-Notebook .jp-Cell").first.wait_for(timeout=LOAD_TIMEOUT * 1000)
    deadline = time.monotonic() + 120
    while not _server_kernel_idle(url, relpath) or kernel_status(page) != "idle":
        dialogs = page.locator(".jp-Dialog")
        if dialogs.count():  # e.g. "Select Kernel": the notebook's kernelspec is not one JupyterLab can start
            raise AssertionError(f"a dialog opened with the notebook: {dialogs.first.inner_text()!r}")
        if time.monotonic() > deadline:
            raise AssertionError(f"the kernel of {relpath} did not start in 120 s")
        page.wait_for_timeout(250)


def _server_kernel_idle(url: str, relpath: str) -> bool:
    with urllib.request.urlopen(url + "/api/sessions", timeout=10) as r:
        sessions = json.load(r)
    return any(s.get("path") == relpath and (s.get("kernel") or {}).get("execution_state") == "idle"
               for s in sessions)


def kernel_status(page) -> str:
    return page.evaluate("""() => {
        const el = document.querySelector('.jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook-ExecutionIndicator');
        return el ? (el.getAttribute('data-status') || '') : '';
    }""")


def run_all_cells(page) -> None:
    page.locator(".lm-MenuBar-itemLabel", has_text=re.compile(r"^Run$")).click()
    page.locator(".lm-Menu-itemLabel", has_text=re.compile(r"^Run All Cells$")).click()


def prompts(page) -> list[str]:
    """The input prompts of all code cells, e.g. ['[1]:', '[*]:', '[ ]:']."""
    return page.evaluate("""() => Array.from(document.querySelectorAll(
        '.jp-NotebookPanel:not(.lm-mod-hidden) .jp-CodeCell .jp-InputPrompt')).map(e => e.textContent.trim())""")


def wait_run_finished(page, timeout: float) -> None:
    """Wait until the kernel is idle and no cell is queued or running ('[*]'), stable for two seconds."""
    deadline = time.monotonic() + timeout
    page.wait_for_timeout(1000)
    stable_since = None
    while True:
        busy = kernel_status(page) != "idle" or any("*" in p for p in prompts(page))
        if busy:
            stable_since = None
        elif stable_since is None:
            stable_since = time.monotonic()
        elif time.monotonic() - stable_since > 2:
            if not any(re.fullmatch(r"\[\d+\]:", p) for p in prompts(page)):
                raise AssertionError(f"no cell was executed: {prompts(page)}")
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"cells still running after {timeout} s: {prompts(page)}")
        page.wait_for_timeout(500)


def error_outputs(page) -> list[str]:
    """Texts of error outputs (tracebacks, also inside Output widgets), of stderr outputs that name an error,
    and of widget labels saying 'error: ...' (the panels' status line)."""
    texts = page.evaluate("""(sel) => Array.from(document.querySelectorAll(
        '.jp-NotebookPanel:not(.lm-mod-hidden) ' + sel)).map(e => e.innerText)""",
                          STDERR + ', .jp-OutputArea-output[data-mime-type="application/vnd.jupyter.error"]')
    labels = page.evaluate("""() => Array.from(document.querySelectorAll(
        '.jp-NotebookPanel:not(.lm-mod-hidden) .jp-OutputArea-output .widget-label')).map(e => e.innerText)""")
    return ([t[-2000:] for t in texts if re.search(r"Traceback|\w*Error\b", t)]
            + [t for t in labels if t.strip().lower().startswith("error")])


def widget_problems(page) -> list[str]:
    """Outputs where a widget should be but is not live: 'Error displaying widget', or a bare repr like IntSlider(...)."""
    texts = page.evaluate("""() => Array.from(document.querySelectorAll(
        '.jp-NotebookPanel:not(.lm-mod-hidden) .jp-OutputArea-output')).map(e => e.innerText)""")
    bad = re.compile(r"Error displaying widget|^\s*(Int|Float)?\w*(Slider|Text|Button|Box|Output|Dropdown)\(")
    return [t[:200] for t in texts if bad.search(t)]


def output_images(page) -> list[str]:
    return page.evaluate("""() => Array.from(document.querySelectorAll(
        '.jp-NotebookPanel:not(.lm-mod-hidden) .jp-OutputArea-output img')).map(e => e.src)""")


def live_widgets(page):
    return page.locator(f".jp-NotebookPanel:not(.lm-mod-hidden) .jp-OutputArea-output :is({WIDGET_SELECTOR})")


def widget_row(page, label: str):
    """The widget whose description is `label` (ipywidgets puts it in a .widget-label inside the widget)."""
    return page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .jupyter-widgets.widget-inline-hbox").filter(
        has=page.locator(".widget-label", has_text=re.compile(rf"^\s*{re.escape(label)}\s*:?\s*$")))


def set_widget_value(page, label: str, value: str) -> None:
    """Type a value into a slider's readout or a text box, as a person would, and confirm with Enter."""
    row = widget_row(page, label)
    row.first.scroll_into_view_if_needed()
    field = row.locator("input, .widget-readout").first
    field.click()
    page.keyboard.press("Control+A")
    page.keyboard.type(value)
    page.keyboard.press("Enter")


def click_button(page, text: str) -> None:
    btn = page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .jupyter-widgets button",
                       has_text=re.compile(re.escape(text), re.I)).first
    btn.scroll_into_view_if_needed()
    btn.click()


def wait_images_changed(page, before: list[str], timeout: float) -> list[str]:
    deadline = time.monotonic() + timeout
    while True:
        now = output_images(page)
        if now and now != before and kernel_status(page) == "idle":
            return now
        if time.monotonic() > deadline:
            raise AssertionError(f"output images did not change in {timeout} s ({len(before)} before, {len(now)} now)")
        page.wait_for_timeout(500)


def log_console_errors(page) -> list[str]:
    """Open View > Show Log Console and return its entries that name an error. Output of widget callbacks that is
    not sent to an Output widget (an exception in a button handler, say) lands there, unseen in the notebook."""
    page.locator(".lm-MenuBar-itemLabel", has_text=re.compile(r"^View$")).click()
    page.locator(".lm-Menu-itemLabel", has_text=re.compile(r"^Show Log Console$")).click()
    page.locator(".jp-LogConsole").first.wait_for()
    page.wait_for_timeout(1000)
    texts = page.evaluate("""() => Array.from(document.querySelectorAll(
        '.jp-LogConsole .jp-OutputArea-output')).map(e => e.innerText)""")
    return [t[-2000:] for t in texts if re.search(r"Traceback|\w*Error\b", t)]


def screenshot(page, name: str, show_last_image: bool = False) -> Path:
    """Save a screenshot under work/screenshots/ (gitignored), optionally scrolled to the last output image."""
    if show_last_image:
        images = page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .jp-OutputArea-output img")
        if images.count():
            images.last.scroll_into_view_if_needed()
            page.wait_for_timeout(300)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / name
    page.screenshot(path=str(path))
    return path


# ---------------------------------------------------------------- the tests

SELFCHECK_CELLS = [
    "import ipywidgets as widgets\nimport matplotlib.pyplot as plt\nfrom IPython.display import display",
    "def draw(n):\n    fig, ax = plt.subplots(figsize=(3, 2))\n    ax.plot(range(n), [i * i for i in range(n)])\n"
    "    ax.set_title(f'n = {n}')\n    plt.show()\n\ndraw(5)",
    "slider = widgets.IntSlider(value=5, min=2, max=50, description='points')\n"
    "button = widgets.Button(description='Redraw')\nout = widgets.Output()\n"
    "fail = widgets.Button(description='Fail')  # its handler raises: the log console must show it\n"
    "fail.on_click(lambda _: 1 / 0)\n\n"
    "def on_click(_):\n    out.clear_output(wait=True)\n    with out:\n        draw(slider.value)\n\n"
    "button.on_click(on_click)\non_click(None)\ndisplay(widgets.VBox([slider, button, fail, out]))",
    "1 / 0  # the last cell fails on purpose: the error detector must see it",
]


def _selfcheck_notebook(folder: Path) -> Path:
    cells = [{"cell_type": "code", "execution_count": None, "id": f"c{i}", "metadata": {}, "outputs": [],
              "source": src} for i, src in enumerate(SELFCHECK_CELLS)]
    nb = {"cells": cells, "metadata": {"kernelspec": {"display_name": "Python 3", "language": "python",
                                                      "name": "python3"}}, "nbformat": 4, "nbformat_minor": 5}
    path = folder / "selfcheck.ipynb"
    _write_json(path, nb)
    return path


def test_harness_selfcheck(jupyterlab, page):
    """A throwaway notebook (slider + button + figure + one failing cell) proves the harness and the widget extension."""
    folder = ROOT / "work" / "browser-test" / f"selfcheck-{os.getpid()}"
    try:
        nb = _selfcheck_notebook(folder)
        open_notebook(page, jupyterlab, nb.relative_to(ROOT).as_posix())
        run_all_cells(page)
        wait_run_finished(page, timeout=120)
        screenshot(page, "selfcheck.png")
        errors = error_outputs(page)
        assert len(errors) == 1 and "ZeroDivisionError" in errors[0], errors
        assert widget_problems(page) == []
        assert live_widgets(page).count() >= 2, "the slider and the button are not rendered as live widgets"
        before = output_images(page)
        assert len(before) == 2, f"expected 2 matplotlib images, found {len(before)}"
        set_widget_value(page, "points", "20")
        click_button(page, "Redraw")
        after = wait_images_changed(page, before, timeout=60)
        assert after[0] == before[0] and after[1] != before[1]
        screenshot(page, "selfcheck_after_click.png")
        click_button(page, "Fail")
        page.wait_for_timeout(1000)
        wait_run_finished(page, timeout=30)
        logged = log_console_errors(page)
        assert len(logged) == 1 and "ZeroDivisionError" in logged[0], logged
        assert page.page_errors == []
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        with contextlib.suppress(OSError):
            folder.parent.rmdir()  # work/browser-test, when no other run uses it


def test_comparison_notebook_in_jupyterlab(jupyterlab, page):
    """Run all cells of the comparison notebook, then change prior_loss_weight and retrain from the button."""
    path = ROOT / NOTEBOOK
    if not path.exists() and not os.environ.get("CI"):
        pytest.skip(f"{NOTEBOOK} does not exist yet")
    assert path.exists(), f"{NOTEBOOK} is missing"
    original = path.read_bytes()
    try:
        open_notebook(page, jupyterlab, NOTEBOOK)
        run_all_cells(page)
        wait_run_finished(page, timeout=RUN_TIMEOUT)
        screenshot(page, "06_after_run_all.png", show_last_image=True)
        assert error_outputs(page) == []
        assert widget_problems(page) == []
        assert live_widgets(page).count() >= 1, "no ipywidgets control is rendered as a live widget"
        before = output_images(page)
        assert before, "no matplotlib image is shown"
        assert widget_row(page, "prior_loss_weight").count() == 1, "no live prior_loss_weight slider"
        set_widget_value(page, "prior_loss_weight", NEW_WEIGHT)
        click_button(page, "retrain and redraw")
        after = wait_images_changed(page, before, timeout=RUN_TIMEOUT)
        assert len(after) == len(before) and after[:-1] == before[:-1] and after[-1] != before[-1], \
            "the retrain button should redraw the panel's figure (the last image) and nothing else"
        wait_run_finished(page, timeout=RUN_TIMEOUT)
        status = page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .jp-OutputArea-output .widget-label",
                              has_text=f"λ={NEW_WEIGHT}")
        assert status.count() >= 1, "the panel's status does not name the new prior_loss_weight"
        screenshot(page, "06_after_retrain.png", show_last_image=True)
        assert error_outputs(page) == []
        assert log_console_errors(page) == []
        assert page.page_errors == []
    finally:
        if path.read_bytes() != original:  # autosave is off; this is a safety net, the test then fails
            path.write_bytes(original)
            raise AssertionError(f"JupyterLab wrote into {NOTEBOOK}; restored the committed version")
