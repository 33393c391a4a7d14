"Round trips and awkward inputs for ChatDataset."
import json, pytest
from pathlib import Path
from finetune_nb.core import DataError
from finetune_nb.data import ChatDataset, ChatExample, load_sample, dpo_example

def test_jsonl_frame_jsonl_round_trip(tmp_path):
    ds = load_sample()
    back = ChatDataset.from_frame(ds.to_frame(), tmp_path/'back.jsonl')
    assert [e.to_dict() for e in back] == [e.to_dict() for e in ds]

def test_jsonl_hf_jsonl_round_trip(tmp_path):
    ds = load_sample()
    hf = ds.to_hf()
    assert len(hf) == len(ds) and 'messages' in hf.column_names
    back = ChatDataset.from_hf(hf, tmp_path/'hf.jsonl')
    # arrow fills absent keys with None; they must not come back as extra keys
    assert [e.to_dict() for e in back] == [e.to_dict() for e in ds]

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
