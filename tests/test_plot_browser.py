"""The live loss plot in a real JupyterLab, driven by headless Chromium.

A trainer subprocess writes a run; the plot in the notebook updates in place (no redraw of the output),
swaps itself for a static snapshot when the run succeeds, and the saved notebook, reopened untrusted,
still shows the curve. Needs `playwright` (pip) and a Chromium (`apt-get install chromium`); skipped
otherwise. Opt-in (~40 s): FTNB_BROWSER_TESTS=1 pytest tests/test_plot_browser.py (.ci/test sets it).
"""
import json
import pytest
from _lab import browser_marks, jupyter_lab, chromium, open_notebook, run_all, save, wait_for, write_notebook

pytestmark = browser_marks()

WRITER = '''import sys, time, math, pathlib
from finetune_nb.runs import RunRecord
run = RunRecord.load(sys.argv[1]); run.update(status='running')
go = pathlib.Path(sys.argv[1]).parent.parent / 'go'
for _ in range(2400):  # start when the test has seen the plot appear
    if go.exists(): break
    time.sleep(0.05)
for i in range(20_000):
    run.metrics.append({'step': i, 'loss': 3 * math.exp(-i / 5000) + 0.5 + 0.1 * math.sin(i), 'tokens': 2048 * i})
    if i % 200 == 0:
        run.metrics.append({'step': i, 'split': 'valid', 'loss': 3 * math.exp(-i / 5000) + 0.6, 'tokens': 2048 * i})
        time.sleep(0.05)
run.update(status='succeeded', result='adapter')
'''


def test_live_plot_in_jupyterlab(tmp_path):
    (tmp_path / 'writer.py').write_text(WRITER)
    (tmp_path / 'train.jsonl').write_text('{"messages": []}\n')
    cells = ["import subprocess, sys\nfrom finetune_nb.runs import RunRegistry\nfrom finetune_nb.plot import LossPlot",
             f"run = RunRegistry({str(tmp_path / 'runs')!r}).create('local', 'tiny', {str(tmp_path / 'train.jsonl')!r})\n"
             "plot = LossPlot(run, min_interval=0.2, smoothing=0.5)\nplot",
             f"proc = subprocess.Popen([sys.executable, {str(tmp_path / 'writer.py')!r}, str(run.folder)])"]
    write_notebook(tmp_path / 'live.ipynb', cells)
    last_x = """() => { const g = document.querySelector('.js-plotly-plot');
                        return g && g.data && g.data.length ? g.data[0].x[g.data[0].x.length - 1] : null }"""
    with jupyter_lab(tmp_path) as base, chromium(1200, 1000) as pg:
        open_notebook(pg, base, 'live.ipynb')
        run_all(pg)
        pg.wait_for_selector('.js-plotly-plot', timeout=60_000)
        (tmp_path / 'go').touch()
        pg.evaluate("() => { document.querySelector('.js-plotly-plot').dataset.ftnbMark = 'first' }")
        seen = []
        def moved():   # the curve's last step, sampled until it has grown three times
            x = pg.evaluate(last_x)
            if isinstance(x, (int, float)) and (not seen or x != seen[-1]): seen.append(x)
            return len(seen) >= 4
        wait_for(moved, 60, 'the live curve to grow', every=0.3)
        # the very element first drawn, updated in place: no clear_output, no new figure
        assert pg.evaluate("() => { const g = document.querySelector('.js-plotly-plot'); return g ? (g.dataset.ftnbMark || 'unmarked') : 'gone' }") in ('first', 'gone')
        assert seen == sorted(seen), seen
        pg.wait_for_function("() => document.querySelector('.ftnb-lossplot img') && !document.querySelector('.js-plotly-plot')", timeout=120_000)
        save(pg, tmp_path / 'live.ipynb')
    saved = json.loads((tmp_path / 'live.ipynb').read_text())
    outs = [o for c in saved['cells'] for o in c.get('outputs', [])]
    assert not any('application/vnd.jupyter.widget-view+json' in o.get('data', {}) for o in outs)
    assert (tmp_path / 'live.ipynb').stat().st_size < 200_000
    # reopened with no trust (a fresh notary): the snapshot still shows
    with jupyter_lab(tmp_path, ['--NotebookNotary.db_file=:memory:']) as base, chromium() as pg:
        pg.goto(f'{base}/lab/tree/live.ipynb?token=ftnbtest')
        pg.wait_for_function("() => { const i = document.querySelector('.ftnb-lossplot img'); return i && i.complete && i.naturalWidth > 100 }",
                             timeout=60_000)
