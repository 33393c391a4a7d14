"""The Workbench in a real JupyterLab + headless Chromium, at a laptop's width: Start in the Train tab until loss points
are drawn, an accept in the Label tab that moves the progress bar, the run in the Runs tab, a comparison, and a
screenshot of each tab.

Screenshots go to the folder in FTNB_SCREENSHOTS (default: this test's tmp dir); CI keeps them as artifacts, git never.
Opt-in (about a minute; .ci/test sets it): FTNB_BROWSER_TESTS=1, with `playwright` importable and Chromium at
/usr/bin/chromium. Nothing here waits a fixed time: each step waits for what it needs.
"""
import os
from pathlib import Path
import pytest
from _lab import browser_marks, jupyter_lab, chromium, open_notebook, run_all, wait_for, write_notebook

pytestmark = browser_marks()

# elements of the tab on screen only: the hidden tabs keep their widgets (and plots) in the page
VISIBLE = "el => el.offsetParent !== null"
LOSS_POINTS = """() => [...document.querySelectorAll('.widget-tab .js-plotly-plot')].filter(g => g.offsetParent !== null)
                   .some(g => (g.data || []).some(t => t.x && t.x.length >= 2))"""
CHARTS_DRAWN = """() => [...document.querySelectorAll('.widget-tab .js-plotly-plot')].filter(g => g.offsetParent !== null)
                       .filter(g => g.querySelectorAll('.barlayer .point').length > 0).length"""
PROGRESS = """() => { const b = [...document.querySelectorAll('.widget-tab .progress-bar')].find(e => e.offsetParent !== null);
                      return b ? parseFloat(b.style.width || '0') : null }"""

def lab_settings(d:Path, dark:bool=False):
    "JupyterLab's user settings for the server on `d`: no news pop-up over the screenshots; the dark theme if `dark`"
    u = d/'.jcfg'/'lab'/'user-settings'/'@jupyterlab'/'apputils-extension'
    u.mkdir(parents=True, exist_ok=True)
    (u/'notification.jupyterlab-settings').write_text('{"fetchNews": "false"}')
    if dark: (u/'themes.jupyterlab-settings').write_text('{"theme": "JupyterLab Dark"}')

def workbench_notebook(d:Path):
    "A notebook that builds the Workbench on the bundled sample, with the simulator, keeping its runs in `d/runs`"
    write_notebook(d/'workbench.ipynb', ["from finetune_nb.workbench import Workbench\nfrom finetune_nb.data import sample_path\n"
                                         f"wb = Workbench(sample_path(), runs={str(d/'runs')!r}, speed=5)\nwb"])

def tab(pg, name:str):
    "Show the Workbench tab `name`"
    pg.locator(f'.widget-tab .lm-TabBar-tab:has-text("{name}")').first.click()
    pg.wait_for_selector(f'.widget-tab .lm-TabBar-tab.lm-mod-current:has-text("{name}")', timeout=30_000)

def shot(pg, folder:Path, name:str):
    "Screenshot the Workbench (its header line and the tab shown) as `folder/name.png`"
    folder.mkdir(parents=True, exist_ok=True)
    pg.locator('.jp-OutputArea-output:has(.widget-tab)').first.screenshot(path=str(folder/f'{name}.png'))

def tour(pg, base:str, d:Path, shots:Path)->str:
    "Run the notebook and visit every tab as a user would; returns the id of the run started in Train"
    open_notebook(pg, base, 'workbench.ipynb')
    run_all(pg)
    pg.wait_for_selector('.widget-tab .lm-TabBar-tab:has-text("Compare")', timeout=120_000)    # the frame, first
    pg.wait_for_selector('.widget-tab .js-plotly-plot', timeout=120_000)                         # then the Data tab's charts
    wait_for(lambda: pg.evaluate(CHARTS_DRAWN) >= 5, 120, "the Data tab's five charts, drawn")
    shot(pg, shots, '1-data')
    # Label: accept the first example; the progress bar moves
    tab(pg, 'Label')
    accept = pg.locator('.widget-tab button:has-text("accept")').filter(visible=True).first
    accept.wait_for(timeout=60_000)
    wait_for(lambda: pg.evaluate(PROGRESS) is not None, 30, 'the label progress bar')
    before = pg.evaluate(PROGRESS)
    accept.click()
    wait_for(lambda: (pg.evaluate(PROGRESS) or 0) > before, 30, 'the progress bar to move after an accept')
    pg.locator('.widget-tab :text("1 reviewed")').filter(visible=True).first.wait_for(timeout=30_000)
    shot(pg, shots, '2-label')
    # Cost
    tab(pg, 'Cost')
    pg.locator('.widget-tab :text("training cost")').filter(visible=True).first.wait_for(timeout=60_000)
    shot(pg, shots, '3-cost')
    # Train: Start, and wait for loss points in the live figure
    tab(pg, 'Train')
    start = pg.locator('.widget-tab button:has-text("Start")').filter(visible=True).first
    start.wait_for(timeout=60_000)
    wait_for(lambda: start.is_enabled(), 60, 'Start to be enabled (the data checked)')
    start.click()
    wait_for(lambda: pg.evaluate(LOSS_POINTS), 120, 'loss points in the Train tab\'s figure')
    run_ids = wait_for(lambda: [p.parent.name for p in (d/'runs').glob('*/run.json')], 30, 'the run on disk')
    assert len(run_ids) == 1
    shot(pg, shots, '4-train')
    # Runs: the run is listed
    tab(pg, 'Runs')
    pg.locator(f'.widget-tab button:has-text("{run_ids[0]}")').filter(visible=True).first.wait_for(timeout=60_000)
    pg.locator('.widget-tab :text("succeeded")').filter(visible=True).first.wait_for(timeout=120_000)
    shot(pg, shots, '5-runs')
    # Compare: once the run has succeeded, base against tuned, and the pairs to judge
    tab(pg, 'Compare')
    cmp = pg.locator('.widget-tab button:has-text("compare base and tuned")').filter(visible=True).first
    wait_for(lambda: cmp.is_visible() and cmp.is_enabled(), 120, 'the comparison to be possible')
    cmp.click()
    pg.locator('.widget-tab :text("Your verdicts")').filter(visible=True).first.wait_for(timeout=120_000)
    shot(pg, shots, '6-compare')
    return run_ids[0]

@pytest.fixture
def lab(tmp_path):
    workbench_notebook(tmp_path); lab_settings(tmp_path)
    with jupyter_lab(tmp_path) as base: yield base, tmp_path

def test_workbench_in_jupyterlab(lab, tmp_path_factory):
    base, d = lab
    shots = Path(os.environ.get('FTNB_SCREENSHOTS') or tmp_path_factory.mktemp('screenshots'))
    with chromium(1366, 1700) as pg:    # a laptop's width; tall, so that each screenshot shows a whole tab
        run_id = tour(pg, base, d, shots)
        assert not pg.locator('.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]').count(), \
            pg.locator('.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]').first.inner_text()
    assert {'1-data.png', '2-label.png', '3-cost.png', '4-train.png', '5-runs.png', '6-compare.png'} <= {p.name for p in shots.glob('*.png')}   # CI's folder holds other tests' too
    assert (d/'runs'/run_id/'eval.json').exists()            # the comparison was saved with the run
    print(f'screenshots: {shots}')
