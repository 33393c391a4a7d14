"Round trips and awkward inputs for ChatDataset."
import json, pytest
from pathlib import Path
from finetune_nb.core import DataError
from finetune_nb.data import ChatDataset, ChatExample, load_sample, dpo_example

def test_jsonl_frame_jsonl_round_trip(tmp_path):
    ds = load_sample()
    back = ChatDataset.from_frame(ds.to_frame(), tmp_path/'back.jsonl')
    assert [e.to_dict() for e in back] == [e.to_dict() for e in ds]

@pytest.mark.needs('datasets')
def test_jsonl_hf_jsonl_round_trip(tmp_path):
    ds = load_sample()
    hf = ds.to_hf()
    assert len(hf) == len(ds) and 'messages' in hf.column_names
    back = ChatDataset.from_hf(hf, tmp_path/'hf.jsonl')
    # arrow fills absent keys with None; they must not come back as extra keys
    assert [e.to_dict() for e in back] == [e.to_dict() for e in ds]

@pytest.mark.needs('datasets')
def test_dpo_round_trip(tmp_path):
    exs = [dpo_example([{'role': 'user', 'content': f'Frage {i}'}], 'Gerne.', 'nö') for i in range(3)]
    ds = ChatDataset.from_examples(exs, tmp_path/'dpo.jsonl')
    assert all(e.is_dpo for e in ds)
    back = ChatDataset.from_frame(ds.to_frame(), tmp_path/'dpo2.jsonl')
    assert [e.to_dict() for e in back] == [e.to_dict() for e in exs]
    back = ChatDataset.from_hf(ds.to_hf(), tmp_path/'dpo3.jsonl')
    assert [e.to_dict() for e in back] == [e.to_dict() for e in exs]

def test_large_file_is_indexed_not_loaded(tmp_path):
    p = tmp_path/'big.jsonl'
    line = json.dumps({'messages': [{'role': 'user', 'content': 'x' * 1000}, {'role': 'assistant', 'content': 'y'}]})
    with open(p, 'w') as f:
        for i in range(20_000): f.write(line + '\n' + ('\n' if i % 1000 == 0 else ''))
    ds = ChatDataset(p)
    assert len(ds) == 20_000
    assert ds[-1].line == 20_000 + 20  # blank lines count in line numbers, not in rows
    assert ds.raw(123) == line.encode()

def test_split_is_deterministic_and_disjoint(tmp_path):
    ds = load_sample()
    t1, v1 = ds.split(0.2, seed=3)
    t2, v2 = ds.split(0.2, seed=3)
    assert [e.line for e in v1] == [e.line for e in v2]
    assert not {e.line for e in t1} & {e.line for e in v1}
    assert len(t1) + len(v1) == len(ds) and len(v1) == 7
    assert [e.line for e in ds.split(0.2, seed=4)[1]] != [e.line for e in v1]

def test_write_is_atomic(tmp_path, monkeypatch):
    p = tmp_path/'out.jsonl'
    ds = load_sample().to_jsonl(p)
    before = p.read_bytes()
    def boom(*a, **k): raise RuntimeError('disk full')
    monkeypatch.setattr('os.replace', boom)
    with pytest.raises(RuntimeError): load_sample()[:3].to_jsonl(p)
    assert p.read_bytes() == before
    assert sorted(x.name for x in tmp_path.iterdir()) == ['out.jsonl']

def test_csv_user_assistant_columns(tmp_path):
    p = tmp_path/'t.csv'
    p.write_text('User,Assistant,system\n"Hallo, wie geht es?","Danke, gut.",Sei formell\n', encoding='utf-8')
    ds = ChatDataset.from_csv(p)
    assert ds[0].messages == [{'role': 'system', 'content': 'Sei formell'}, {'role': 'user', 'content': 'Hallo, wie geht es?'},
                              {'role': 'assistant', 'content': 'Danke, gut.'}]

def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match='nope.jsonl'): ChatDataset(tmp_path/'nope.jsonl')


# ---- the ecosystem's formats ---------------------------------------------------------------------------
import os, pandas as pd
from finetune_nb import data
from finetune_nb.data import as_dataset, convert_record, detect_format, FORMATS

def jsonl(path, rows, blank_after=None):
    path.write_text(''.join(json.dumps(r, ensure_ascii=False) + '\n' + ('\n' if i == blank_after else '') for i, r in enumerate(rows)), encoding='utf-8')
    return path

U, A = (lambda t: {'role': 'user', 'content': t}), (lambda t: {'role': 'assistant', 'content': t})

def test_alpaca_input_is_kept_everywhere(tmp_path):
    rows = [{'instruction': 'Übersetze ins Englische.', 'input': 'Guten Morgen', 'output': 'Good morning'},
            {'instruction': 'Sag Hallo.', 'input': '', 'output': 'Hallo'}]
    want = [[U('Übersetze ins Englische.\n\nGuten Morgen'), A('Good morning')], [U('Sag Hallo.'), A('Hallo')]]
    datasets = pytest.importorskip('datasets')
    for src in (jsonl(tmp_path/'alpaca.jsonl', rows), rows, pd.DataFrame(rows), datasets.Dataset.from_list(rows)):
        assert [e.messages for e in as_dataset(src, dir=tmp_path/'c')] == want, type(src)

def test_dolly_context_and_alpaca_history(tmp_path):
    d = convert_record({'instruction': 'Fasse zusammen.', 'context': 'Ein langer Text.', 'response': 'Kurz.', 'category': 'summarization'})
    assert d['messages'][0] == U('Fasse zusammen.\n\nEin langer Text.')
    d = convert_record({'instruction': 'Und jetzt?', 'output': 'Fertig.', 'history': [['Erst?', 'Ja.']], 'system': 'Knapp.'})
    assert d['messages'] == [{'role': 'system', 'content': 'Knapp.'}, U('Erst?'), A('Ja.'), U('Und jetzt?'), A('Fertig.')]

def test_conversational_prompt_completion_is_never_a_repr(tmp_path):
    rows = [{'prompt': [{'role': 'system', 'content': 'Sei knapp.'}, U('2+2?')], 'completion': [A('4')]},
            {'prompt': [U('3+3?')], 'completion': [A('6')]}]
    datasets = pytest.importorskip('datasets')
    for src in (jsonl(tmp_path/'pc.jsonl', rows), rows, pd.DataFrame(rows), datasets.Dataset.from_list(rows)):
        ds = as_dataset(src, dir=tmp_path/'c')
        assert [e.messages for e in ds] == [r['prompt'] + r['completion'] for r in rows], type(src)
        assert "[{'role'" not in ds.path.read_text(encoding='utf-8')

def test_prompt_completion_strings_and_system(tmp_path):
    ds = as_dataset(jsonl(tmp_path/'pc.jsonl', [{'prompt': 'Hi', 'completion': 'Servus', 'system': 'Wienerisch.'}]))
    assert ds[0].messages == [{'role': 'system', 'content': 'Wienerisch.'}, U('Hi'), A('Servus')]

def test_sharegpt_with_tools(tmp_path):
    row = {'conversations': [{'from': 'human', 'value': 'Kontostand?'},
                             {'from': 'function_call', 'value': json.dumps({'name': 'balance', 'arguments': {'iban': 'AT1'}})},
                             {'from': 'observation', 'value': '{"eur": 12}'},
                             {'from': 'gpt', 'value': 'Sie haben 12 €.'}],
           'system': 'Formell.', 'tools': json.dumps([{'name': 'balance', 'parameters': {'type': 'object'}}])}
    ds = as_dataset(jsonl(tmp_path/'sg.jsonl', [row, row]))
    m = ds[0].messages
    assert [x['role'] for x in m] == ['system', 'user', 'assistant', 'tool', 'assistant']
    call = m[2]['tool_calls'][0]
    assert call['function'] == {'name': 'balance', 'arguments': '{"iban": "AT1"}'} and m[3]['tool_call_id'] == call['id']
    assert ds[0].tools == [{'type': 'function', 'function': {'name': 'balance', 'parameters': {'type': 'object'}}}]

def test_trl_preference_rows_become_openai_dpo(tmp_path):
    rows = [{'prompt': 'Hi', 'chosen': 'Guten Tag.', 'rejected': 'yo'},
            {'prompt': [U('Hallo')], 'chosen': [A('Servus.')], 'rejected': [A('was')]}]
    ds = as_dataset(jsonl(tmp_path/'pref.jsonl', rows))
    assert all(e.is_dpo for e in ds)
    assert ds[0].to_dict() == {'input': {'messages': [U('Hi')]}, 'preferred_output': [A('Guten Tag.')], 'non_preferred_output': [A('yo')]}
    implicit = as_dataset([{'chosen': [U('Hallo'), A('Servus.')], 'rejected': [U('Hallo'), A('was')]}], dir=tmp_path/'c')
    assert implicit[0].to_dict() == ds[1].to_dict()
    with pytest.raises(DataError, match='records:1: .*without "prompt"'): as_dataset([{'chosen': 'a', 'rejected': 'b'}], dir=tmp_path/'c')

def test_openai_dpo_and_chat_files_are_opened_as_they_are(tmp_path):
    p = ChatDataset.from_examples([dpo_example([U('Hi')], 'Gerne.', 'nö')] * 2, tmp_path/'dpo.jsonl').path
    assert as_dataset(p).path == p and as_dataset(load_sample().path).path == load_sample().path

def test_a_converted_file_keeps_line_numbers_and_is_made_once(tmp_path):
    rows = [{'conversations': [{'from': 'human', 'value': f'F{i}'}, {'from': 'gpt', 'value': f'A{i}'}]} for i in range(4)]
    src = jsonl(tmp_path/'sg.jsonl', rows, blank_after=1)
    ds = as_dataset(src)
    assert ds.path.parent == tmp_path and ds.path.name.startswith('sg.openai-') and ds.path.suffix == '.jsonl'
    assert [e.line for e in ds] == [1, 2, 4, 5] and ds[2].reply == 'A2'
    before = ds.path.stat().st_mtime_ns
    assert as_dataset(src).path == ds.path and ds.path.stat().st_mtime_ns == before
    jsonl(src, rows[:2])                                     # the original changed: a new copy
    assert as_dataset(src).path != ds.path and len(as_dataset(src)) == 2

def test_unknown_shapes_name_the_line(tmp_path):
    rows = [{'conversations': [{'from': 'human', 'value': 'x'}, {'from': 'gpt', 'value': 'y'}]}] * 2 + [{'instruction': 'a', 'output': 'b'}]
    with pytest.raises(DataError, match=r'mixed.jsonl:3: \[format_mismatch\]'): as_dataset(jsonl(tmp_path/'mixed.jsonl', rows))
    assert [p.name for p in tmp_path.iterdir()] == ['mixed.jsonl']      # nothing half-converted left behind
    with pytest.raises(DataError, match=r'records:2: \[unknown_format\]'): as_dataset([rows[2], {'text': 'x'}], dir=tmp_path/'c')
    with pytest.raises(DataError, match=r'DataFrame:1: \[unknown_format\]'): as_dataset(pd.DataFrame({'text': ['x']}), dir=tmp_path/'c')
    # a file of no known shape is opened as it is: reading it names the line (and the validator names every one)
    ds = as_dataset(jsonl(tmp_path/'text.jsonl', [{'text': 'x'}]))
    with pytest.raises(DataError, match=r'text.jsonl:1: \[missing_messages\]'): ds[0]
    with pytest.raises(DataError, match=r'sg.jsonl:1: \[format_mismatch\]'): as_dataset(jsonl(tmp_path/'sg.jsonl', rows[2:]), format='sharegpt')

def test_every_format_is_detected():
    rows = {'openai': {'messages': []}, 'sharegpt': {'conversations': []}, 'alpaca': {'instruction': 'a', 'input': '', 'output': 'b'},
            'prompt_completion': {'Question': 'a', 'Answer': 'b'}, 'preference': {'chosen': 'a', 'rejected': 'b'}}
    assert {f: detect_format(r) for f, r in rows.items()} == {f: f for f in FORMATS}
    assert detect_format({'input': {'messages': []}, 'preferred_output': []}) == 'openai'
    assert detect_format({'text': 'x'}) is None and detect_format([1]) is None

def test_records_are_content_addressed(tmp_path):
    rows = [{'messages': [U('Hallo'), A('Servus')]}]
    a, b = as_dataset(rows, dir=tmp_path), as_dataset(list(rows), dir=tmp_path)
    assert a.path == b.path and len(list(tmp_path.iterdir())) == 1
    assert as_dataset([{'messages': [U('Hallo'), A('Grüß Gott')]}], dir=tmp_path).path != a.path

def test_default_folder_is_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv('FTNB_CACHE', str(tmp_path))
    assert as_dataset([{'prompt': 'a', 'completion': 'b'}]).path.parent == tmp_path/'data'

def test_as_dataset_refuses_what_it_cannot_read(tmp_path):
    datasets = pytest.importorskip('datasets')
    dd = datasets.DatasetDict({'train': datasets.Dataset.from_list([{'prompt': 'a', 'completion': 'b'}])})
    with pytest.raises(Exception, match=r'pass one split'): as_dataset(dd)
    assert as_dataset(dd['train'], dir=tmp_path)[0].reply == 'b'
    with pytest.raises(DataError, match='file_not_found'): as_dataset(tmp_path)

# ---- the index cache -----------------------------------------------------------------------------------

@pytest.fixture
def cached(tmp_path, monkeypatch):
    "Cache every index (files here are small) in a cache of this test's own; count the scans"
    monkeypatch.setenv('FTNB_CACHE', str(tmp_path/'cache'))
    monkeypatch.setattr(data, 'INDEX_CACHE_MIN_BYTES', 0)
    scans, real = [], data._scan_offsets
    monkeypatch.setattr(data, '_scan_offsets', lambda *a, **k: scans.append(1) or real(*a, **k))
    return scans

def rows_file(p, n, tag='Frage'):
    with open(p, 'w') as f:
        for i in range(n): f.write(json.dumps({'messages': [U(f'{tag} {i}'), A('ok')]}) + ('\n\n' if i % 7 == 0 else '\n'))
    return p

def test_index_cache_is_used_while_the_file_is_unchanged(tmp_path, cached):
    p = rows_file(tmp_path/'d.jsonl', 300)
    first = ChatDataset(p); idx = first.index
    assert len(cached) == 1
    again = ChatDataset(p)
    assert again.index == idx and again[299].line == first[299].line and len(cached) == 1

@pytest.mark.parametrize('change', ['append', 'same_size_edit', 'touch'])
def test_index_cache_is_rebuilt_when_the_file_changes(tmp_path, cached, change):
    p = rows_file(tmp_path/'d.jsonl', 300)
    assert len(ChatDataset(p)) == 300
    if change == 'append':
        with open(p, 'a') as f: f.write(json.dumps({'messages': [U('neu'), A('ok')]}) + '\n')
    elif change == 'same_size_edit':
        st = p.stat()
        rows_file(p, 300, tag='FRAGE')
        os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))    # same size and mtime: only the head's hash differs
    else:
        st = p.stat(); os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    ds = ChatDataset(p)
    assert len(ds) == (301 if change == 'append' else 300) and len(cached) == 2
    if change == 'same_size_edit': assert ds[0].messages[0]['content'] == 'FRAGE 0'

def test_index_cache_is_per_file_and_a_torn_cache_is_ignored(tmp_path, cached):
    a, b = rows_file(tmp_path/'a.jsonl', 10), rows_file(tmp_path/'b.jsonl', 20)
    assert (len(ChatDataset(a)), len(ChatDataset(b))) == (10, 20)
    cache = data._index_cache_path(a)
    cache.write_bytes(cache.read_bytes()[:-5])
    assert len(ChatDataset(a)) == 10 and len(cached) == 3 and ChatDataset(a).index == ChatDataset(a, _index=None).index

def test_an_unwritable_cache_costs_only_a_rescan(tmp_path, cached, monkeypatch):
    def refuse(*a, **k): raise OSError(13, 'Permission denied')
    monkeypatch.setattr(data, 'atomic_write', refuse)
    p = rows_file(tmp_path/'d.jsonl', 10)
    assert len(ChatDataset(p)) == 10 and len(ChatDataset(p)) == 10 and len(cached) == 2

# ---- find -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize('chunk', [31, 999, 1 << 22])
def test_find_matches_brute_force(chunk):
    ds = load_sample()
    for view in (ds, ds[3:30:2]):
        texts = [e.text().casefold() for e in view]
        for q in ['karte', 'IBAN', 'Überweisung', 'Sehr geehrte', 'ß', 'zzz-none', '„']:
            want = [i for i, t in enumerate(texts) if q.casefold() in t]
            assert list(view.find(q, chunk=chunk)) == want, q
            assert list(view.find(q, start=len(view) - 1, reverse=True, chunk=chunk)) == want[::-1], q
            raw = list(view.find(q, exact=False, chunk=chunk))
            assert set(want) <= set(raw), q                                 # the cheap pass is a superset
            if want: assert list(view.find(q, start=want[0] + 1, chunk=chunk)) == want[1:], q

def test_find_with_a_predicate_and_bounds():
    ds = load_sample()
    with_tools = [i for i, e in enumerate(ds) if e.tools]
    assert list(ds.find(where=lambda e: bool(e.tools))) == with_tools
    assert list(ds.find(start=5, stop=8)) == [5, 6, 7] and list(ds.find(start=7, stop=4, reverse=True)) == [7, 6, 5]
    assert list(ds.find('Karte', start=10**6)) == [] and list(ds.find('Karte', start=-5, stop=0)) == []

def test_a_csv_is_converted_once_next_to_it(tmp_path):
    p = tmp_path/'pairs.csv'
    p.write_text('instruction,input,output\nÜbersetze,Guten Morgen,Good morning\n', encoding='utf-8')
    ds = as_dataset(p)
    assert ds.path.parent == tmp_path and ds.path.name.startswith('pairs.openai-')
    assert ds[0].messages[0]['content'] == 'Übersetze\n\nGuten Morgen' and as_dataset(p).path == ds.path
