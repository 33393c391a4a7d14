"Helpers for tests that run a writer in a child process."
import os, subprocess, sys, textwrap, time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

def spawn(code:str, *args):
    "Start a Python child running `code`, with finetune_nb importable, stdout piped line by line"
    env = {**os.environ, 'PYTHONPATH': str(ROOT) + os.pathsep + os.environ.get('PYTHONPATH', '')}
    return subprocess.Popen([sys.executable, '-u', '-c', textwrap.dedent(code), *map(str, args)],
                            stdout=subprocess.PIPE, text=True, env=env)

def wait_for_line(proc, prefix:str, timeout:float=60):
    "Read the child's stdout until a line starts with `prefix`"
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        line = proc.stdout.readline()
        if line.startswith(prefix): return line
        if not line and proc.poll() is not None: break
    raise AssertionError(f'child never printed {prefix!r}')
