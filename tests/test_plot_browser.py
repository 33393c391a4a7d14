"""The live loss plot in a real JupyterLab, driven by headless Chromium.

A trainer subprocess writes a run; the plot in the notebook updates in place (no redraw of the output),
swaps itself for a static snapshot when the run succeeds, and the saved notebook, reopened untrusted,
still shows the curve. Needs `playwright` (pip) and a Chromium (`apt-get install chromium`); skipped
otherwise. Opt-in (~40 s): FTNB_BROWSER_TESTS=1 pytest tests/test_plot_browser.py (.ci/test sets it).
"""
import json, os, shutil, socket, subprocess, sys, time
from pathlib import Path

import pytest

pw = pytest.importorskip('playwright.sync_api')
CHROME = shutil.which('chromium') or shutil.which('chromium-browser')
JUPYTER = Path(sys.executable).parent / 'jupyter'
pytestmark = [pytest.mark.skipif(not os.environ.get('FTNB_BROWSER_TESTS'), reason='browser test: set FTNB_BROWSER_TESTS=1'),
              pytest.mark.skipif(not CHROME or not JUPYTER.exists(), reason='needs Chromium and JupyterLab')]
ARGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update', '--no-first-run']

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


def _port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0)); return s.getsockname()[1]


def _lab(root, extra=()):
    port, tok = _port(), 'ftnbtest'
    env = {**os.environ, 'JUPYTER_CONFIG_DIR': str(root / '.jcfg'), 'JUPYTERLAB_WORKSPACES_DIR': str(root / '.ws')}
    env.pop('IN_TEST', None); env.pop('NBDEV_TEST', None)
    proc = subprocess.Popen([str(JUPYTER), 'lab', '--no-browser', f'--port={port}', f'--ServerApp.token={tok}', '--ServerApp.ip=127.0.0.1',
                             '--ServerApp.port_retries=0', '--allow-root', f'--ServerApp.root_dir={root}', *extra],
                            stdout=open(root / 'lab.log', 'w'), stderr=subprocess.STDOUT, env=env)
    return proc, f'http://127.0.0.1:{port}/lab/tree/live.ipynb?token={tok}'


def test_live_plot_in_jupyterlab(tmp_path):
    (tmp_path / 'writer.py').write_text(WRITER)
    (tmp_path / 'train.jsonl').write_text('{"messages": []}\n')
    cells = ["import subprocess, sys\nfrom finetune_nb.runs import RunRegistry\nfrom finetune_nb.plot import LossPlot",
             f"run = RunRegistry({str(tmp_path / 'runs')!r}).create('local', 'tiny', {str(tmp_path / 'train.jsonl')!r})\n"
             "plot = LossPlot(run, min_interval=0.2, smoothing=0.5)\nplot",
             f"proc = subprocess.Popen([sys.executable, {str(tmp_path / 'writer.py')!r}, str(run.folder)])"]
    nb = {'cells': [{'cell_type': 'code', 'execution_count': None, 'metadata': {}, 'outputs': [], 'source': c} for c in cells],
          'metadata': {'kernelspec': {'display_name': 'Python 3', 'language': 'python', 'name': 'python3'}}, 'nbformat': 4, 'nbformat_minor': 5}
    (tmp_path / 'live.ipynb').write_text(json.dumps(nb))
    lab, url = _lab(tmp_path)
    try:
        time.sleep(4)
        with pw.sync_playwright() as p:
            b = p.chromium.launch(executable_path=CHROME, args=ARGS)
            pg = b.new_page(viewport={'width': 1200, 'height': 1000})
            pg.goto(url)
            pg.wait_for_selector('text=| Idle', timeout=60_000); time.sleep(1)
            pg.locator('.jp-Notebook').click()
            pg.click('text=Run'); pg.click('text=Run All Cells')
            pg.wait_for_selector('.js-plotly-plot', timeout=60_000)
            (tmp_path / 'go').touch()
            pg.evaluate("() => { document.querySelector('.js-plotly-plot').dataset.ftnbMark = 'first' }")
            seen = []
            for _ in range(6):
                time.sleep(0.8)
                seen.append(pg.evaluate("() => { const g = document.querySelector('.js-plotly-plot'); return g && g.data && g.data.length ? g.data[0].x[g.data[0].x.length - 1] : (g ? 'g:' + (g.data ? g.data.length : 'nodata') : 'none') }"))
            # the very element first drawn, updated in place: no clear_output, no new figure
            assert pg.evaluate("() => { const g = document.querySelector('.js-plotly-plot'); return g ? (g.dataset.ftnbMark || 'unmarked') : 'gone' }") in ('first', 'gone')
            live = [s for s in seen if isinstance(s, (int, float))]
            assert len(live) >= 2 and live == sorted(live) and live[0] < live[-1], seen
            pg.wait_for_function("() => document.querySelector('.ftnb-lossplot img') && !document.querySelector('.js-plotly-plot')", timeout=120_000)
            pg.keyboard.press('Control+s'); time.sleep(2)
            b.close()
    finally:
        lab.terminate(); lab.wait()
    saved = json.loads((tmp_path / 'live.ipynb').read_text())
    outs = [o for c in saved['cells'] for o in c.get('outputs', [])]
    assert not any('application/vnd.jupyter.widget-view+json' in o.get('data', {}) for o in outs)
    assert (tmp_path / 'live.ipynb').stat().st_size < 200_000
    # reopened with no trust (a fresh notary): the snapshot still shows
    lab, url = _lab(tmp_path, ['--NotebookNotary.db_file=:memory:'])
    try:
        time.sleep(4)
        with pw.sync_playwright() as p:
            b = p.chromium.launch(executable_path=CHROME, args=ARGS)
            pg = b.new_page(); pg.goto(url)
            pg.wait_for_selector('.ftnb-lossplot img', timeout=60_000); time.sleep(1)
            assert pg.evaluate("() => document.querySelector('.ftnb-lossplot img').naturalWidth") > 100
            b.close()
    finally:
        lab.terminate(); lab.wait()
