"""Widget helpers, headless: figures land in an Output as PNG, library progress bars are quiet inside callbacks."""
import matplotlib

matplotlib.use("Agg")

import ipywidgets as w  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402

from dbtutor.course import no_progress_bars  # noqa: E402
from dbtutor.course.widgets import _guarded, show_figure  # noqa: E402


def test_show_figure_puts_one_png_in_the_panel_and_closes_the_figure():
    out = w.Output()
    for _ in range(2):
        fig, ax = plt.subplots()
        ax.plot([0, 1], [1, 0])
        show_figure(out, fig)
        assert not plt.fignum_exists(fig.number)
    assert len(out.outputs) == 1                                     # clear=True replaces the previous one
    data = out.outputs[0]["data"]
    assert set(data) >= {"image/png"} and len(data["image/png"]) > 100


def test_library_progress_bars_are_off_only_inside_a_callback():
    from diffusers.utils import logging as dl
    from transformers.utils import logging as tl
    seen = []
    dl.enable_progress_bar()                        # as in a fresh kernel (other tests may have switched them off)
    tl.enable_progress_bar()
    with no_progress_bars():
        seen.append((dl.is_progress_bar_enabled(), tl.is_progress_bar_enabled()))
    assert seen == [(False, False)] and dl.is_progress_bar_enabled() and tl.is_progress_bar_enabled()


def test_a_failing_callback_is_reported_in_the_panel_and_the_button_comes_back():
    out, status, button = w.Output(), w.HTML(), w.Button()

    def boom():
        raise ValueError("bad prompt")
    _guarded(out, status, button, boom)()
    assert "ValueError: bad prompt" in status.value and button.disabled is False
