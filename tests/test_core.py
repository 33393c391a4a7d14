"Core helpers that need processes, fake shells or patched system calls: notebook detection, process control, writes that fail, long lines."
import os, re, sys, stat, errno, subprocess, time, types, tracemalloc, json
from pathlib import Path
import pytest
from finetune_nb import core
from finetune_nb.core import (DataError, WriteError, atomic_write, atomic_writer, iter_lines, in_notebook, in_colab,
                              pid_alive, kill_tree, write_addressed)

def wait_for(cond, timeout=30.0):
    "Poll `cond` until it is true (a readiness condition, not a fixed sleep)"
    t0 = time.monotonic()
    while not cond():
        if time.monotonic() - t0 > timeout: raise TimeoutError('condition never became true')
        time.sleep(0.02)

# ---- notebook detection ------------------------------------------------------------------------------

class Shell:  # Colab's shell class is called `Shell`; what makes it a notebook is the kernel behind it
    def __init__(self, kernel=None, config=None): self.kernel, self.config = kernel, config or {}

class TerminalInteractiveShell:
    config = {'TerminalIPythonApp': {}}

@pytest.fixture
def fake_ipython(monkeypatch):
    monkeypatch.delenv('NBDEV_TEST', raising=False); monkeypatch.delenv('IN_TEST', raising=False)
    def use(shell): monkeypatch.setitem(sys.modules, 'IPython', types.SimpleNamespace(get_ipython=lambda: shell))
    return use

def test_in_notebook_counts_colab_and_other_kernels(fake_ipython):
    fake_ipython(Shell(kernel=object())); assert in_notebook()                   # Colab (and any kernel with a `kernel`)
    fake_ipython(Shell(config={'IPKernelApp': {}})); assert in_notebook()       # IPython's classic check
    fake_ipython(TerminalInteractiveShell()); assert not in_notebook()          # ipython in a terminal
    fake_ipython(None); assert not in_notebook()                                 # IPython imported, no shell

def test_in_notebook_test_opt_out(fake_ipython, monkeypatch):
    fake_ipython(Shell(kernel=object()))
    monkeypatch.setenv('NBDEV_TEST', '1'); assert not in_notebook()
    monkeypatch.delenv('NBDEV_TEST'); monkeypatch.setenv('IN_TEST', '1'); assert not in_notebook()

def test_in_colab(monkeypatch):
    monkeypatch.delitem(sys.modules, 'google.colab', raising=False)
    assert not in_colab()
    monkeypatch.setitem(sys.modules, 'google.colab', types.ModuleType('google.colab'))
    assert in_colab()

def test_colab_gets_its_widget_manager(monkeypatch):
    "In Colab, plotly's FigureWidget shows only with Colab's custom widget manager on: the live plot turns it on before it is shown"
    calls = []
    colab, output = types.ModuleType('google.colab'), types.ModuleType('google.colab.output')
    output.enable_custom_widget_manager = lambda: calls.append(1)
    colab.output = output
    monkeypatch.setitem(sys.modules, 'google.colab', colab); monkeypatch.setitem(sys.modules, 'google.colab.output', output)
    from finetune_nb.plot import LossPlot
    from finetune_nb.runs import MetricsLog
    LossPlot(MetricsLog(), renderer='widget')
    assert calls

# ---- processes -----------------------------------------------------------------------------------------

def test_no_os_kill_in_the_helpers():
    "`os.kill(pid, 0)` terminates the process on Windows: the helpers go through psutil only"
    import inspect
    for f in (pid_alive, kill_tree): assert 'os.kill' not in inspect.getsource(f) and 'killpg' not in inspect.getsource(f)

def test_pid_alive(tmp_path):
    p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)  # ftnb-test-marker'])
    try:
        assert pid_alive(p.pid)
        wait_for(lambda: pid_alive(p.pid, cmd_contains='ftnb-test-marker'))        # once the child has exec'd its program
        assert not pid_alive(p.pid, cmd_contains='finetune_nb.train')            # alive, but not the program we meant
    finally:
        p.terminate()
    wait_for(lambda: not pid_alive(p.pid))                                          # a zombie (not yet reaped) is not alive
    p.wait()
    assert not pid_alive(p.pid) and not pid_alive(None) and not pid_alive(-1)

CHILD = '''
import subprocess, sys, time, pathlib
c = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])
pathlib.Path(sys.argv[1]).write_text(str(c.pid))
time.sleep(60)
'''

def test_kill_tree_kills_the_children_too(tmp_path):
    pidf = tmp_path/'child.pid'
    p = subprocess.Popen([sys.executable, '-c', CHILD, str(pidf)])
    wait_for(lambda: pidf.exists() and pidf.read_text())
    child = int(pidf.read_text())
    assert pid_alive(child)
    assert kill_tree(p.pid, timeout=10) is True
    p.wait(timeout=10)
    wait_for(lambda: not pid_alive(child))
    assert kill_tree(p.pid) is True  # already gone: nothing to do

@pytest.mark.skipif(sys.platform == 'win32', reason='ignoring SIGTERM is a POSIX notion')
def test_kill_tree_kills_what_ignores_terminate(tmp_path):
    ready = tmp_path/'ready'
    code = f'import signal, time, pathlib; signal.signal(signal.SIGTERM, signal.SIG_IGN); pathlib.Path({str(ready)!r}).touch(); time.sleep(60)'
    p = subprocess.Popen([sys.executable, '-c', code])
    wait_for(ready.exists)
    assert kill_tree(p.pid, timeout=0.5) is True  # terminate is ignored: it had to kill
    assert not pid_alive(p.pid)

# ---- writes that cannot succeed ------------------------------------------------------------------------

def test_full_disk_names_the_target_and_keeps_the_old_file(tmp_path, monkeypatch):
    p = tmp_path/'export.jsonl'
    atomic_write(p, 'old\n')
    def full(fd): raise OSError(errno.ENOSPC, 'No space left on device')
    monkeypatch.setattr(os, 'fsync', full)  # the data reaches the disk at flush/fsync: that is where ENOSPC comes
    with pytest.raises(WriteError) as e: atomic_write(p, 'new\n')
    assert str(e.value).startswith(f'{p}: ') and 'disk is full' in str(e.value) and 'old file is kept' in str(e.value)
    assert isinstance(e.value, OSError) and e.value.errno == errno.ENOSPC
    monkeypatch.undo()
    assert p.read_text() == 'old\n' and [x.name for x in tmp_path.iterdir()] == ['export.jsonl']

def test_writing_onto_a_folder_names_it(tmp_path):
    (tmp_path/'out').mkdir()
    with pytest.raises(WriteError, match=f'{tmp_path/"out"}: is a folder'): atomic_write(tmp_path/'out', 'x')
    with pytest.raises(WriteError, match='is a folder'):
        with atomic_writer(tmp_path/'out', 'wb') as f: f.write(b'x')
    assert [x.name for x in tmp_path.iterdir()] == ['out'] and not list((tmp_path/'out').iterdir())

def test_a_file_as_the_parent_folder_is_a_clear_error(tmp_path):
    (tmp_path/'f').write_text('x')
    with pytest.raises(WriteError, match=str(tmp_path/'f'/'out.txt')): atomic_write(tmp_path/'f'/'out.txt', 'x')

def test_modes(tmp_path):
    p = tmp_path/'a.txt'; p.write_text('x'); os.chmod(p, 0o640)
    atomic_write(p, 'y'); assert stat.S_IMODE(p.stat().st_mode) == 0o640
    old = os.umask(0o027)
    try: assert stat.S_IMODE(atomic_write(tmp_path/'b.txt', 'x').stat().st_mode) == 0o640
    finally: os.umask(old)
    assert stat.S_IMODE(atomic_write(tmp_path/'c.txt', 'x', mode=0o600).stat().st_mode) == 0o600
    assert stat.S_IMODE(write_addressed([b'x\n'], tmp_path/'addr').stat().st_mode) == 0o666 & ~old

def test_a_callers_own_error_passes_through_unchanged(tmp_path):
    with pytest.raises(KeyError):
        with atomic_writer(tmp_path/'x.txt') as f: raise KeyError('mine')
    with pytest.raises(FileNotFoundError):  # an OSError that is not about this write
        with atomic_writer(tmp_path/'x.txt') as f: open(tmp_path/'missing')

# ---- lines too long --------------------------------------------------------------------------------------

def test_long_line_is_an_error_without_reading_it_whole(tmp_path):
    p = tmp_path/'long.jsonl'
    with open(p, 'wb') as f:
        f.write(b'{"a": 1}\n{"messages": "'); f.write(b'x' * (20 << 20)); f.write(b'"}\n{"b": 2}\n')
    tracemalloc.start()
    try:
        with pytest.raises(DataError, match=r'long.jsonl:2: \[line_too_long\]'): list(iter_lines(p, max_line=1 << 20))
        peak_lines = tracemalloc.get_traced_memory()[1]
    finally: tracemalloc.stop()
    assert peak_lines < 4 << 20, peak_lines  # about the limit, not the 20 MB line
    assert [l for l, _, _ in iter_lines(p, max_line=21 << 20)] == [1, 2, 3]

def test_scan_memory_is_bounded_by_the_limit_not_the_line(tmp_path):
    from finetune_nb.data import ChatDataset
    p = tmp_path/'long.jsonl'
    with open(p, 'wb') as f:
        f.write(b'{"a": 1}\n{"messages": "')
        for _ in range(60): f.write(b'x' * (1 << 20))
        f.write(b'"}\n')
    tracemalloc.start()
    try:
        with pytest.raises(DataError, match=r'long.jsonl:2: \[line_too_long\]'): len(ChatDataset(p, max_line=1 << 20))
        peak = tracemalloc.get_traced_memory()[1]
    finally: tracemalloc.stop()
    assert peak < 24 << 20, peak  # a 4 MB read block, its line-break mask and the limit, not the 60 MB line

@pytest.mark.skipif(not os.path.exists('/dev/zero'), reason='needs /dev/zero')
def test_dev_zero_is_an_error_not_a_memory_error():
    with pytest.raises(DataError, match=r'/dev/zero:1: \[line_too_long\]'): next(iter_lines('/dev/zero', max_line=1 << 20))
    from finetune_nb.data import ChatDataset
    with pytest.raises(DataError, match=r'/dev/zero:1: \[line_too_long\]'): len(ChatDataset('/dev/zero', max_line=1 << 20))

def test_the_limit_can_be_raised_for_the_session(tmp_path, monkeypatch):
    p = tmp_path/'a.jsonl'; p.write_text('{"messages": "' + 'x' * 200 + '"}\n')
    monkeypatch.setattr(core, 'MAX_LINE_BYTES', 100)
    with pytest.raises(DataError, match='line_too_long'): list(iter_lines(p))
    monkeypatch.setattr(core, 'MAX_LINE_BYTES', 1000)
    assert len(list(iter_lines(p))) == 1

def test_require_names_the_extra():
    with pytest.raises(ImportError, match=r'finetune_nb\[qlora\]'): core.require('bitsandbytes_not_here_x', 'qlora')
    assert core._EXTRAS['gguf'] == 'local' and core._EXTRAS['botocore'] == 'aws'

def test_a_bom_and_crlf_do_not_count_against_the_limit(tmp_path):
    from finetune_nb.data import ChatDataset
    p = tmp_path/'bom.jsonl'
    body = b'{"messages": "' + b'x' * 86 + b'"}'                      # exactly 102 bytes of content
    p.write_bytes(core.BOM + body + b'\r\n' + body + b'\r\n')
    assert [r for _, _, r in iter_lines(p, max_line=102)] == [body, body]
    ds = ChatDataset(p, max_line=102)
    assert len(ds) == 2 and ds.raw(0) == body
    with pytest.raises(DataError, match=r'bom.jsonl:1: \[line_too_long\]'): list(iter_lines(p, max_line=101))
    with pytest.raises(DataError, match=r'bom.jsonl:1: \[line_too_long\]'): len(ChatDataset(p, max_line=101))


def _ansi_free(s): return re.sub(r'\x1b\[[0-9;]*m', '', s)

def test_an_expected_error_reads_as_one_line_in_a_notebook(tmp_path):
    "In a real kernel a refusal (BudgetExceeded) shows as its one line; %tb and %xmode Verbose still give the traceback"
    nbformat, nbclient = pytest.importorskip('nbformat'), pytest.importorskip('nbclient')
    pytest.importorskip('ipykernel')
    cells = ["from finetune_nb.jobs import check_budget\n"
             "class Est:\n    usd = 0.04\n    def __str__(self): return 'the estimate, in detail'\n"
             "def launch(): check_budget(Est(), max_usd=0.001, what='training tiny')\n"
             "launch()",
             "%tb",
             "%xmode Verbose\nlaunch()"]
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells])
    nbclient.NotebookClient(nb, timeout=120, kernel_name='python3', allow_errors=True,
                            resources={'metadata': {'path': str(tmp_path)}}).execute()
    def error(i): return next(o for o in nb.cells[i].outputs if o.output_type == 'error')
    short = error(0)
    assert short.ename == 'BudgetExceeded' and len(short.traceback) == 1
    line = _ansi_free(short.traceback[0])
    assert line.startswith('BudgetExceeded: training tiny is estimated at $0.04, above max_usd=$0.001; nothing was started.')
    assert 'Raise max_usd, or confirm' in line and '\n' not in line and 'the estimate' not in line
    for i in (1, 2):                                   # the whole story is one command away
        full = _ansi_free('\n'.join(error(i).traceback))
        assert 'launch()' in full and 'check_budget' in full and 'the estimate, in detail' in full, full

def test_plain_python_still_prints_the_traceback(tmp_path):
    "Outside IPython nothing changes: the usual traceback, then str(e)"
    p = subprocess.run([sys.executable, '-c', "from finetune_nb.core import ConfigError\nraise ConfigError('bad setting')"],
                       capture_output=True, text=True)
    assert p.returncode == 1 and 'Traceback (most recent call last)' in p.stderr
    assert p.stderr.rstrip().endswith('finetune_nb.core.ConfigError: bad setting')
