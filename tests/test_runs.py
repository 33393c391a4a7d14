"Runs on disk: atomicity under kill -9, a writer subprocess followed by tail(), concurrent writers, reopening."
import json, os, signal, subprocess, sys, textwrap, threading, time
from pathlib import Path

import pytest

from finetune_nb.core import DataError, ConfigError
from finetune_nb.runs import MetricsLog, RunRecord, RunRegistry, TERMINAL
from finetune_nb.jobs import Job

from _child import ROOT, spawn as _spawn, wait_for_line as _wait_for_line


WRITER = '''
import sys, time
from finetune_nb.runs import MetricsLog
log = MetricsLog(sys.argv[1])
n, delay = int(sys.argv[2]), float(sys.argv[3])
print('ready', flush=True)
for i in range(n):
    log.append({'step': i, 'loss': 1.0 / (i + 1), 'note': 'x' * 200})
    print('ack', i, flush=True)
    if delay: time.sleep(delay)
log.close()
print('done', flush=True)
'''


def test_kill9_writer_loses_nothing_acknowledged(tmp_path):
    path = tmp_path / 'metrics.jsonl'
    proc = _spawn(WRITER, path, 10**9, 0)
    _wait_for_line(proc, 'ready')
    acked = -1
    for _ in range(300): acked = int(_wait_for_line(proc, 'ack').split()[1])
    os.kill(proc.pid, signal.SIGKILL); proc.wait()
    log = MetricsLog(path)
    steps = [r['step'] for r in log.rows]
    assert steps == list(range(len(steps)))           # every row whole, in order, none glued together
    assert len(steps) >= acked + 1                     # nothing acknowledged is lost
    log.append({'step': len(steps), 'loss': 0.1})     # and the file can be appended to again
    assert [r['step'] for r in MetricsLog(path).rows][-1] == len(steps)


def test_torn_line_from_killed_writer(tmp_path):
    path = tmp_path / 'metrics.jsonl'
    code = '''
    import sys, time
    from finetune_nb.runs import MetricsLog
    log = MetricsLog(sys.argv[1]); log.append({'step': 0, 'loss': 1.0})
    f = open(sys.argv[1], 'ab'); f.write(b'{"step": 1, "split": "train", "lo'); f.flush()
    print('torn', flush=True); time.sleep(60)
    '''
    proc = _spawn(code, path)
    _wait_for_line(proc, 'torn')
    os.kill(proc.pid, signal.SIGKILL); proc.wait()
    log = MetricsLog(path)
    assert [r['step'] for r in log.rows] == [0]
    log.append({'step': 2, 'loss': 0.5}); log.close()
    again = MetricsLog(path)
    assert [r['step'] for r in again.rows] == [0, 2]
    assert again.skipped == [2]


def test_tail_follows_a_writer_subprocess(tmp_path):
    path = tmp_path / 'metrics.jsonl'
    reader = MetricsLog(path)           # the file does not exist yet
    batches = []
    reader.subscribe(batches.append)
    reader.tail(interval=0.02)
    assert reader.tail() is reader      # idempotent
    proc = _spawn(WRITER, path, 300, 0.001)
    _wait_for_line(proc, 'done'); proc.wait()
    reader.stop()                       # one last read: nothing written before the stop is missed
    assert [r['step'] for r in reader.rows] == list(range(300))
    assert sum(len(b) for b in batches) == 300
    assert len(batches) > 1             # it streamed, not read once at the end


def test_concurrent_threads_write_whole_lines(tmp_path):
    path = tmp_path / 'metrics.jsonl'
    log = MetricsLog(path)
    seen = []
    log.subscribe(seen.extend)
    def work(k):
        for i in range(500): log.append({'step': i, 'loss': float(k), 'writer': k})
    ts = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in ts: t.start()
    for t in ts: t.join()
    log.close()
    assert len(seen) == 2000 and seen == log.rows       # subscribers see rows in the order they landed
    rows = MetricsLog(path).rows
    assert len(rows) == 2000
    for k in range(4): assert [r['step'] for r in rows if r['writer'] == k] == list(range(500))


def test_closed_log_refuses_rows(tmp_path):
    log = MetricsLog(tmp_path / 'm.jsonl'); closed = []
    log.subscribe(lambda rows: None, on_close=lambda: closed.append(1))
    log.close()
    assert closed == [1]
    with pytest.raises(ConfigError, match='closed'): log.append({'step': 0, 'loss': 1})


RUNJSON_WRITER = '''
import sys
from finetune_nb.runs import RunRecord
run = RunRecord.load(sys.argv[1])
print('ready', flush=True)
i = 0
while True:
    i += 1
    run.update(status='running' if i % 2 else 'queued', extra={'i': i, 'pad': 'y' * 50000})
'''


def test_kill9_during_run_json_rewrites(tmp_path):
    reg = RunRegistry(tmp_path / 'runs')
    data = tmp_path / 'train.jsonl'; data.write_text('{"messages": []}\n' * 3)
    run = reg.create('simulator', 'gpt-4o-mini', data)
    for delay in (0.05, 0.13, 0.31):
        proc = _spawn(RUNJSON_WRITER, run.folder)
        _wait_for_line(proc, 'ready'); time.sleep(delay)
        os.kill(proc.pid, signal.SIGKILL); proc.wait()
        again = reg.get(run.id)                      # always the old or the new version, never a torn one
        assert again.status in ('running', 'queued', 'created')
    assert len(reg.list()) == 1                      # a temp file left by the kill is not a run
    assert reg.list().status.iloc[0] != 'unreadable'


def test_registry_survives_bad_folders(tmp_path):
    reg = RunRegistry(tmp_path / 'runs')
    data = tmp_path / 'train.jsonl'; data.write_text('{"messages": []}\n')
    good = reg.create('openai', 'gpt-4o-mini', data, valid=data, cost={'usd': 1.5})
    for name, text in [('20200101-000000-000001', '{"id": "20200101-000000-000001", "status": "bogus"}'),
                       ('20200101-000000-000002', '[1, 2]'),
                       ('20200101-000000-000003', '{"id": "someone-else"}')]:
        (reg.root / name).mkdir(); (reg.root / name / 'run.json').write_text(text)
    (reg.root / '20200101-000000-000004').mkdir()   # no run.json at all
    df = reg.list()
    assert list(df.id)[0] == good.id and len(df) == 5
    assert (df.status == 'unreadable').sum() == 4
    assert all('run.json' in e for e in df.error[df.status == 'unreadable'])
    with pytest.raises(DataError, match='status must be one of'): reg.get('20200101-000000-000001')
    assert [r.id for r in reg] == [good.id]
    assert good.data['valid']['n_examples'] == 1 and good.cost == {'usd': 1.5}


def test_run_reopens_after_restart_with_whole_curve(tmp_path):
    data = tmp_path / 'train.jsonl'; data.write_text('{"messages": []}\n' * 5)
    run = RunRegistry(tmp_path / 'runs').create('local', 'tiny', data, spec={'lr': 1e-4})
    run.metrics.extend({'step': i, 'loss': 3 - i / 100} for i in range(200))
    run.update(status='succeeded', result=str(run.folder / 'adapter'))
    code = '''
    import sys, json
    from finetune_nb.runs import RunRegistry
    reg = RunRegistry(sys.argv[1]); run = reg.get(sys.argv[2])
    print('state', json.dumps([run.status, len(run.metrics), run.metrics.last()['step'], run.spec]), flush=True)
    '''
    proc = _spawn(code, tmp_path / 'runs', run.id)          # a fresh interpreter: a restarted kernel
    status, n, last, spec = json.loads(_wait_for_line(proc, 'state')[6:]); proc.wait()
    assert (status, n, last, spec) == ('succeeded', 200, 199, {'lr': 1e-4})


def test_job_wait_and_refresh_pick_up_new_metrics(tmp_path):
    data = tmp_path / 'train.jsonl'; data.write_text('{"messages": []}\n')
    run = RunRegistry(tmp_path / 'runs').create('local', 'tiny', data)
    job = Job(None, run)                                    # a record-only job (no backend)
    other = RunRecord.load(run.folder)                      # the "trainer" side, another handle
    other.metrics.append({'step': 1, 'loss': 2.0})
    other.update(status='succeeded', result='adapter')
    job.refresh()
    assert job.finished and job.status in TERMINAL and len(job.metrics) == 1
