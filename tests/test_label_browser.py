"""LabelPanel in a real JupyterLab + headless Chromium: escaping, the keys box (and its focus after a click on an
action), an edit typed just before a click, tags in the header, and the export button with its on_export callback.

Opt-in (about 30 s; .ci/test sets it): FTNB_BROWSER_TESTS=1, with `playwright` importable (pip install playwright; never
`playwright install`) and Chromium at /usr/bin/chromium (apt-get install chromium). Nothing here waits a fixed time:
each step waits for what it needs (the server's /api/status, a widget, a line in the journal).
"""
import json, shutil
import pytest
from _lab import browser_marks, jupyter_lab, chromium, open_notebook, run_all, wait_for, write_notebook

pytestmark = browser_marks()
EVIL = '<img src=x onerror="document.title=\'pwned\'"><script>document.title=\'pwned\'</script>'

def _journal_ops(path):
    try: return [(r['op'], r['i']) for r in map(json.loads, path.read_text().splitlines()) if r['op'] not in ('open', 'pos')]
    except (OSError, ValueError): return []  # not there yet, or a line being written

@pytest.fixture
def lab(tmp_path):
    from finetune_nb.data import sample_path
    shutil.copy(sample_path(), tmp_path/'s.jsonl')
    with open(tmp_path/'s.jsonl', 'a') as f:
        f.write(json.dumps({'messages': [{'role': 'user', 'content': EVIL}, {'role': 'assistant', 'content': EVIL}]}) + '\n')
    src = (f"from finetune_nb.label import LabelSession, LabelPanel\n"
           f"p = LabelPanel(LabelSession({str(tmp_path/'s.jsonl')!r}, labels=('tonfall',)))\n"
           f"p.on_export(lambda path: open({str(tmp_path/'exported.txt')!r}, 'w').write(str(path)))\np")
    write_notebook(tmp_path/'panel.ipynb', [src])
    with jupyter_lab(tmp_path) as base: yield base, tmp_path

def test_panel_in_jupyterlab(lab):
    base, d = lab
    journal = d/'s.labels.jsonl'
    with chromium(1300, 1000) as pg:
        open_notebook(pg, base, 'panel.ipynb')
        run_all(pg)
        pg.wait_for_selector('.jupyter-widgets textarea', timeout=60_000)
        pg.wait_for_selector('.jupyter-widgets >> text=#0', timeout=30_000)       # rendered by the kernel
        n_cells = pg.locator('.jp-Cell').count()
        # a correction typed and followed at once by a click on accept: the edit lands first
        ta = pg.locator('.jupyter-widgets textarea').first
        ta.click(); ta.fill('Korrigiert im Browser.')
        pg.locator('button:has-text("accept")').first.click()
        wait_for(lambda: ('accept', 0) in _journal_ops(journal), 30, 'the accept in the journal')
        pg.wait_for_selector('.jupyter-widgets >> text=#1', timeout=30_000)
        # after a click on an action the keys box has the focus: the next key is the panel's, not JupyterLab's
        keys = pg.locator('.jupyter-widgets input[placeholder*="click here"]').first
        wait_for(lambda: keys.evaluate('e => e === document.activeElement'), 30, 'the keys box to take the focus')
        pg.keyboard.type('s')
        wait_for(lambda: ('skip', 1) in _journal_ops(journal), 30, 'the key typed after the click')
        assert pg.locator('.jp-Cell').count() == n_cells
        # a tag shows in the header
        pg.wait_for_selector('.jupyter-widgets >> text=#2', timeout=30_000)
        pg.locator('button:has-text("tonfall")').first.click()
        pg.wait_for_selector('.jupyter-widgets >> text=tags: tonfall', timeout=30_000)
        # the keys box (with its legend): fast typing, each key one action, in order; JupyterLab's own keys stay quiet
        assert pg.locator('.jupyter-widgets >> text=a accept · r reject').count() >= 1
        assert pg.locator('.jupyter-widgets >> text=inserts a cell').count() >= 1      # the legend says where keys go
        keys.click()
        pg.keyboard.type('srau', delay=0)
        wait_for(lambda: ('undo', 4) in _journal_ops(journal), 30, 'the keys in the journal')
        pg.keyboard.type('dd', delay=20)                # 'dd' would delete a cell in command mode
        assert pg.locator('.jp-Cell').count() == n_cells
        # the hostile example renders as text
        box = pg.locator('.jupyter-widgets input[type=number]').first
        box.fill('37'); box.press('Enter')               # Enter syncs the value before the click
        pg.locator('button:has-text("go")').first.click()
        pg.wait_for_selector('.jupyter-widgets >> text=#37', timeout=30_000)
        assert pg.title() != 'pwned' and pg.locator('.jupyter-widgets img').count() == 0
        assert 'document.title' in pg.locator('.jupyter-widgets').first.inner_text()
        # the export button writes the accepted examples next to the data
        pg.locator('button:has-text("export")').last.click()
        pg.wait_for_selector('.jupyter-widgets >> text=wrote 1 accepted example to', timeout=30_000)
        wait_for(lambda: (d/'exported.txt').exists(), 30, 'the on_export callback')
    assert (d/'exported.txt').read_text().endswith('s.reviewed.jsonl')
    ops = [json.loads(l) for l in journal.read_text().splitlines()]
    acts = [(r['op'], r['i']) for r in ops if r['op'] not in ('open', 'pos')]
    assert acts == [('edit', 0), ('accept', 0), ('skip', 1), ('tag', 2), ('skip', 2), ('reject', 3), ('accept', 4), ('undo', 4)]
    assert ops[1]['set']['e'] == {'2': 'Korrigiert im Browser.'}
    assert [json.loads(l)['messages'][-1]['content'] for l in (d/'s.reviewed.jsonl').read_text().splitlines()][0] == 'Korrigiert im Browser.'
