"""LabelPanel in a real JupyterLab + headless Chromium: escaping, the keys box, and an edit typed just before a click.

Opt-in (about 30 s; .ci/test sets it): FTNB_BROWSER_TESTS=1, with `playwright` importable (pip install playwright; never
`playwright install`) and Chromium at /usr/bin/chromium (apt-get install chromium).
"""
import json, os, shutil, socket, subprocess, sys, time
from pathlib import Path
import pytest

pytestmark = pytest.mark.skipif(not os.environ.get('FTNB_BROWSER_TESTS'), reason='browser test: set FTNB_BROWSER_TESTS=1')
CHROMIUM = '/usr/bin/chromium'
EVIL = '<img src=x onerror="document.title=\'pwned\'"><script>document.title=\'pwned\'</script>'

def _free_port():
    with socket.socket() as s: s.bind(('127.0.0.1', 0)); return s.getsockname()[1]

@pytest.fixture
def lab(tmp_path):
    from finetune_nb.data import sample_path
    shutil.copy(sample_path(), tmp_path/'s.jsonl')
    with open(tmp_path/'s.jsonl', 'a') as f:
        f.write(json.dumps({'messages': [{'role': 'user', 'content': EVIL}, {'role': 'assistant', 'content': EVIL}]}) + '\n')
    src = (f"from finetune_nb.label import LabelSession, LabelPanel\n"
           f"p = LabelPanel(LabelSession({str(tmp_path/'s.jsonl')!r}, labels=('tonfall',)))\np")
    nb = {'cells': [{'cell_type': 'code', 'execution_count': None, 'metadata': {}, 'outputs': [], 'source': src}],
          'metadata': {'kernelspec': {'display_name': 'Python 3', 'language': 'python', 'name': 'python3'}}, 'nbformat': 4, 'nbformat_minor': 5}
    (tmp_path/'panel.ipynb').write_text(json.dumps(nb))
    port = _free_port()
    proc = subprocess.Popen([sys.executable, '-m', 'jupyterlab', '--no-browser', f'--port={port}', '--ServerApp.token=t', '--ServerApp.ip=127.0.0.1',
                             '--ServerApp.port_retries=0', '--allow-root', f'--ServerApp.root_dir={tmp_path}'],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(4)
    yield f'http://127.0.0.1:{port}/lab/tree/panel.ipynb?token=t', tmp_path
    proc.terminate(); proc.wait(30)

def test_panel_in_jupyterlab(lab):
    pw_api = pytest.importorskip('playwright.sync_api')
    if not Path(CHROMIUM).exists(): pytest.skip('no chromium')
    url, d = lab
    with pw_api.sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking',
                                                               '--disable-component-update', '--no-first-run'])
        pg = b.new_page(viewport={'width': 1300, 'height': 1000})
        pg.goto(url)
        pg.wait_for_selector('text=| Idle', timeout=90_000); time.sleep(1)
        pg.click('text=Run'); pg.click('text=Run All Cells')
        pg.wait_for_selector('.jupyter-widgets textarea', timeout=60_000); time.sleep(2)
        n_cells = pg.locator('.jp-Cell').count()
        # a correction typed and followed at once by a click on accept: the edit lands first
        ta = pg.locator('.jupyter-widgets textarea').first
        ta.click(); ta.fill('Korrigiert im Browser.')
        pg.locator('button:has-text("accept")').first.click(); time.sleep(1.5)
        # the keys box: fast typing, each key one action, in order; JupyterLab's own keys stay quiet
        pg.locator('.jupyter-widgets input[placeholder^="a b"]').first.click()
        pg.keyboard.type('srau', delay=0); time.sleep(2)
        pg.keyboard.type('dd', delay=20); time.sleep(1)   # 'dd' would delete a cell in command mode
        assert pg.locator('.jp-Cell').count() == n_cells
        # the hostile example renders as text
        box = pg.locator('.jupyter-widgets input[type=number]').first
        box.fill('37'); box.press('Enter'); time.sleep(1)   # Enter syncs the value before the click
        pg.locator('button:has-text("go")').first.click(); time.sleep(1.5)
        assert pg.title() != 'pwned' and pg.locator('.jupyter-widgets img').count() == 0
        assert 'document.title' in pg.locator('.jupyter-widgets').first.inner_text()
        b.close()
    ops = [json.loads(l) for l in (d/'s.labels.jsonl').read_text().splitlines()]
    acts = [(r['op'], r['i']) for r in ops if r['op'] not in ('open', 'pos')]
    assert acts == [('edit', 0), ('accept', 0), ('skip', 1), ('reject', 2), ('accept', 3), ('undo', 3)]
    assert ops[1]['set']['e'] == {'2': 'Korrigiert im Browser.'}
