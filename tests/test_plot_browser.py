"""The live loss plot in a real JupyterLab, driven by headless Chromium.

A trainer subprocess writes a run; the plot in the notebook updates in place (no redraw of the output) and,
when the run succeeds, stays live (its controls too) with its static snapshot left, hidden, under it; the
saved notebook, reopened untrusted or trusted, shows the snapshot (and no "model not found"). And `job.follow()`
on the simulator: the plot shows at once with its heading (run id, state, step x/N, the tuned model at the end)
and every point of a job that ended quickly. Needs `playwright` (pip) and a Chromium (`apt-get install
chromium`); skipped otherwise. Opt-in (~60 s): FTNB_BROWSER_TESTS=1 pytest tests/test_plot_browser.py (.ci/test sets it).
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
        # the run ended: the live figure and its controls stay; its snapshot is in the page, hidden under it
        pg.wait_for_selector('.ftnb-snapshot', state='attached', timeout=120_000)
        assert pg.locator('.js-plotly-plot').first.is_visible() and pg.locator('.widget-slider').first.is_visible()
        assert not pg.locator('.ftnb-snapshot').first.is_visible()
        assert pg.evaluate("() => document.querySelector('.js-plotly-plot').dataset.ftnbMark") == 'first'
        save(pg, tmp_path / 'live.ipynb')
    saved = json.loads((tmp_path / 'live.ipynb').read_text())
    outs = [o for c in saved['cells'] for o in c.get('outputs', [])]
    assert any('application/vnd.jupyter.widget-view+json' in o.get('data', {}) for o in outs)
    assert any('ftnb-snapshot' in ''.join(o.get('data', {}).get('text/html', '')) for o in outs)
    assert (tmp_path / 'live.ipynb').stat().st_size < 200_000
    shown = "() => { const i = document.querySelector('.ftnb-snapshot img'); return i && i.complete && i.naturalWidth > 100 && i.offsetParent !== null }"
    # reopened with no trust (a fresh notary): the snapshot shows
    with jupyter_lab(tmp_path, ['--NotebookNotary.db_file=:memory:']) as base, chromium() as pg:
        pg.goto(f'{base}/lab/tree/live.ipynb?token=ftnbtest')
        pg.wait_for_function(shown, timeout=60_000)
    # reopened trusted (signed when saved), with a new kernel: the snapshot shows, the dead widget's error does not
    with jupyter_lab(tmp_path) as base, chromium() as pg:
        open_notebook(pg, base, 'live.ipynb')
        pg.wait_for_function(shown, timeout=60_000)
        err = pg.locator('text=Error displaying widget')
        assert err.count() == 0 or not err.first.is_visible()


def test_follow_a_simulated_job_in_jupyterlab(tmp_path):
    cells = ["import time\nfrom finetune_nb.backends import get_backend\nfrom finetune_nb.data import sample_path\n"
             "be = get_backend('simulator', runs='runs')\njob = be.launch(sample_path(), n_epochs=1)",
             "t0 = time.perf_counter()\nplot = job.follow()\nprint(f'follow() returned after {time.perf_counter() - t0:.2f} s')\nplot"]
    write_notebook(tmp_path / 'follow.ipynb', cells)
    n_points = "() => { const g = document.querySelector('.js-plotly-plot'); return g && g.data && g.data.length ? g.data[0].x.length : 0 }"
    with jupyter_lab(tmp_path) as base, chromium() as pg:
        open_notebook(pg, base, 'follow.ipynb')
        run_all(pg)
        head = pg.locator('.ftnb-lossplot-head').first
        head.wait_for(timeout=60_000)                               # the heading shows before the live figure is built
        run_id = json.loads(next((tmp_path / 'runs').glob('*/run.json')).read_text())['id']
        assert run_id in head.inner_text() and 'gpt-4o-mini' in head.inner_text()
        pg.wait_for_function("() => /succeeded · step 37\\/37 · .*→ ft:/.test(document.querySelector('.ftnb-lossplot-head').innerText)",
                             timeout=120_000)
        pg.wait_for_selector('.js-plotly-plot', timeout=120_000)
        wait_for(lambda: pg.evaluate(n_points) == 37, 60, 'all 37 points in the live figure')
        assert pg.locator('.widget-slider').first.is_visible()      # the controls stay at the end
        print(pg.locator('.jp-OutputArea-output >> text=follow() returned after').first.inner_text())   # for the record, not a test
