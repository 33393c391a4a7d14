"JupyterLab + headless Chromium for the browser tests: every step waits for a condition, never a fixed time."
import json, os, shutil, socket, subprocess, sys, time, urllib.request
from contextlib import contextmanager
from pathlib import Path
import pytest

CHROMIUM = shutil.which('chromium') or shutil.which('chromium-browser') or '/usr/bin/chromium'
ARGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update', '--no-first-run']
TOKEN = 'ftnbtest'

def browser_marks():
    "Skip unless the browser tests are asked for (FTNB_BROWSER_TESTS=1) and Chromium, JupyterLab and playwright are here"
    missing = [n for n, ok in (('chromium', Path(CHROMIUM).exists()), ('jupyterlab', _has('jupyterlab')), ('playwright', _has('playwright')))
               if not ok]
    return [pytest.mark.skipif(not os.environ.get('FTNB_BROWSER_TESTS'), reason='browser test: set FTNB_BROWSER_TESTS=1'),
            pytest.mark.skipif(bool(missing), reason=f'browser test: needs {", ".join(missing)}')]

def _has(mod)->bool:
    import importlib.util
    return importlib.util.find_spec(mod) is not None

def wait_for(cond, timeout=60, what='a condition', every=0.1):
    "Poll `cond()` until it is truthy and return it; fail after `timeout` seconds"
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if r := cond(): return r
        time.sleep(every)
    pytest.fail(f'timed out after {timeout} s waiting for {what}')

def free_port()->int:
    with socket.socket() as s: s.bind(('127.0.0.1', 0)); return s.getsockname()[1]

def write_notebook(path, cells):
    "A notebook of code `cells` (strings), not yet run"
    nb = {'cells': [{'cell_type': 'code', 'execution_count': None, 'metadata': {}, 'outputs': [], 'source': c} for c in cells],
          'metadata': {'kernelspec': {'display_name': 'Python 3', 'language': 'python', 'name': 'python3'}}, 'nbformat': 4, 'nbformat_minor': 5}
    Path(path).write_text(json.dumps(nb))

@contextmanager
def jupyter_lab(root, extra=()):
    "A JupyterLab serving `root`, ready (it answered /api/status); yields its base URL (with `?token=` to append)"
    root, port = Path(root), free_port()
    env = {**os.environ, 'JUPYTER_CONFIG_DIR': str(root/'.jcfg'), 'JUPYTERLAB_WORKSPACES_DIR': str(root/'.ws')}
    for k in ('IN_TEST', 'NBDEV_TEST'): env.pop(k, None)
    log_path = root/'lab.log'
    with open(log_path, 'wb') as log:
        proc = subprocess.Popen([sys.executable, '-m', 'jupyterlab', '--no-browser', f'--port={port}', f'--ServerApp.token={TOKEN}',
                                 '--ServerApp.ip=127.0.0.1', '--ServerApp.port_retries=0', '--allow-root', f'--ServerApp.root_dir={root}', *extra],
                                stdout=log, stderr=subprocess.STDOUT, env=env)
        def up():
            if proc.poll() is not None: pytest.fail(f'JupyterLab exited ({proc.returncode}):\n' + log_path.read_text(errors='replace')[-3000:])
            try: return urllib.request.urlopen(f'http://127.0.0.1:{port}/api/status?token={TOKEN}', timeout=2).status == 200
            except OSError: return False
        try:
            try: wait_for(up, 120, 'JupyterLab to answer /api/status', every=0.2)
            except BaseException:
                print(log_path.read_text(errors='replace')[-3000:]); raise
            yield f'http://127.0.0.1:{port}'
        finally:
            proc.terminate()
            try: proc.wait(30)
            except subprocess.TimeoutExpired: proc.kill(); proc.wait()

@contextmanager
def chromium(width=1366, height=900):
    "A page of headless Chromium (laptop width by default)"
    from playwright.sync_api import sync_playwright
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try: yield b.new_page(viewport={'width': width, 'height': height})
        finally: b.close()

def open_notebook(pg, base, name):
    "Open notebook `name` in JupyterLab and wait until its kernel is idle"
    pg.goto(f'{base}/lab/tree/{name}?token={TOKEN}')
    pg.wait_for_selector('text=| Idle', timeout=90_000)

def run_all(pg):
    "Run every cell of the open notebook (the menu, as a user would)"
    pg.locator('.jp-Notebook').click()
    pg.click('text=Run'); pg.click('text=Run All Cells')

def save(pg, path):
    "Save the open notebook and wait until the file on disk changed"
    before = Path(path).stat().st_mtime_ns
    pg.keyboard.press('Control+s')
    wait_for(lambda: Path(path).stat().st_mtime_ns != before, 30, f'{Path(path).name} to be saved')
