"`ftnb validate` as a user's pipeline runs it: exit codes, JSON keys, no tracebacks."
import os, json, fcntl, subprocess
from finetune_nb.data import sample_path
from conftest import FTNB

def test_sample_is_valid_json(ftnb):
    r = ftnb('validate', sample_path(), '--format', 'json')
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert {'path', 'n_examples', 'n_valid', 'errors', 'warnings', 'stats'} <= set(d)
    assert d['n_examples'] == d['n_valid'] == 37 and d['errors'] == []
    assert all({'line', 'code', 'message'} <= set(w) for w in d['warnings'])

def test_broken_file_exit_1_with_lines(ftnb, tmp_path):
    p = tmp_path/'broken.jsonl'
    good = json.dumps({'messages': [{'role': 'user', 'content': 'Hi'}, {'role': 'assistant', 'content': 'Hallo'}]})
    p.write_bytes(b'\n'.join([good.encode(), b'{"messages": [', b'\xff\xfe', b'"just a string"',
                              json.dumps({'messages': [{'role': 'user', 'content': 'Hi'}]}).encode(), good.encode()]))
    r = ftnb('validate', p, '--format', 'json')
    assert r.returncode == 1
    d = json.loads(r.stdout)
    assert [(e['line'], e['code']) for e in d['errors']] == [(2, 'invalid_json'), (3, 'invalid_utf8'), (4, 'not_an_object'), (5, 'missing_assistant')]
    assert d['n_examples'] == 6 and d['n_valid'] == 2
    assert 'Traceback' not in r.stderr

def test_openai_model_needs_ten_examples(ftnb, tmp_path):
    p = tmp_path/'few.jsonl'
    p.write_text(json.dumps({'messages': [{'role': 'user', 'content': 'Hi'}, {'role': 'assistant', 'content': 'Hallo'}]}) + '\n')
    assert ftnb('validate', p).returncode == 0
    r = ftnb('validate', p, '--model', 'gpt-4o-mini-2024-07-18')
    assert r.returncode == 1 and 'too_few_examples' in r.stdout

def test_unreadable_and_wrong_calls_exit_2(ftnb, tmp_path):
    r = ftnb('validate', tmp_path/'missing.jsonl')
    assert r.returncode == 2 and 'missing.jsonl' in r.stderr and 'Traceback' not in r.stderr
    r = ftnb('validate', tmp_path)
    assert r.returncode == 2 and 'folder' in r.stderr
    assert ftnb('validate').returncode == 2
    assert ftnb('validate', sample_path(), '--format', 'yaml').returncode == 2

def test_dash_reads_stdin(ftnb, tmp_path):
    "`-` is stdin wherever a data file is read; findings name `<stdin>` and its line"
    r = ftnb('validate', '-', '--format', 'json', input=sample_path().read_text(encoding='utf-8'), env={**os.environ, 'FTNB_CACHE': str(tmp_path)})
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d['path'] == '<stdin>' and d['n_valid'] == 37
    r = ftnb('validate', '-', input='{"messages": [\n', env={**os.environ, 'FTNB_CACHE': str(tmp_path)})
    assert r.returncode == 1 and r.stdout.startswith('<stdin>:') and 'line 1' in r.stdout
    r = ftnb('cost', '-', '--model', 'gpt-4.1-mini-2025-04-14', '--format', 'json', input=sample_path().read_text(encoding='utf-8'),
             env={**os.environ, 'FTNB_CACHE': str(tmp_path)})
    assert r.returncode == 0 and json.loads(r.stdout)['n_examples'] == 37

def test_quiet_on_a_closed_pipe(tmp_path):
    "`ftnb validate big.jsonl | head -1`: the reader leaves early; no BrokenPipeError traceback, exit 141"
    p = tmp_path/'big.jsonl'
    p.write_text('{"messages": [{"role": "user", "content": "hi"}]}\n' * 20_000)
    r, w = os.pipe()
    fcntl.fcntl(w, fcntl.F_SETPIPE_SZ, 4096)     # a small pipe, so the ~50 KB of JSON cannot all fit before the reader leaves
    prod = subprocess.Popen([str(FTNB), 'validate', str(p), '--format', 'json'], stdout=w, stderr=subprocess.PIPE)
    os.close(w)
    with os.fdopen(r, 'rb') as f: f.readline()   # the reader takes one line and goes away
    err = prod.stderr.read().decode(); rc = prod.wait(timeout=120)
    assert 'Traceback' not in err and 'BrokenPipe' not in err, err
    assert rc == 141
