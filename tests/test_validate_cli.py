"`ftnb validate` as a user's pipeline runs it: exit codes, JSON keys, no tracebacks."
import json
from finetune_nb.data import sample_path

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
