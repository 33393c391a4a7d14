"Token counts: exact against tiktoken and the chat template, offline loading, parallel counting, the validator hook."
import json, os, sys, warnings, hashlib, subprocess
from pathlib import Path
import pytest

os.environ.setdefault('HF_HUB_OFFLINE', '1')
import finetune_nb.tokens as T
from finetune_nb.tokens import (encoding_name, load_encoding, get_counter, count_tokens, TokenCount, TokenCheck,
                                find_encoding_file, OpenAICounter)
from finetune_nb.core import asset_path

SAMPLE = asset_path('sample_support_de.jsonl')

def cookbook_count(messages, enc, tools_tokens=0):
    "OpenAI cookbook's num_tokens_from_messages, written out independently"
    n = 0
    for m in messages:
        n += 3
        for k, v in m.items():
            n += len(enc.encode(v))
            if k == 'name': n += 1
    return n + 3 + tools_tokens

CHATS = [
    [{'role': 'system', 'content': 'Sie sind ein hilfreicher Assistent.'}, {'role': 'user', 'content': 'Wie sperre ich meine Karte?'},
     {'role': 'assistant', 'content': 'In der App unter „Karten“ → „Sperren“.'}],
    [{'role': 'user', 'name': 'example_user', 'content': 'New synergies will help drive top-line growth.'},
     {'role': 'assistant', 'name': 'example_assistant', 'content': 'Things working well together will increase revenue.'}],
    [{'role': 'user', 'content': '🙂 emoji, ümlaut, 中文 and   spaces\n\nnewlines'}, {'role': 'assistant', 'content': ''}],
]

@pytest.mark.parametrize('model', ['gpt-4o-mini-2024-07-18', 'gpt-4.1', 'gpt-3.5-turbo-0125', 'ft:gpt-4o-mini-2024-07-18:acme::x1'])
def test_openai_counts_match_the_documented_method(model):
    import tiktoken
    c = get_counter(model)
    assert c.exact
    enc = load_encoding(encoding_name(model))
    assert tiktoken.get_encoding(encoding_name(model)) is enc   # registered with tiktoken: no download later
    for msgs in CHATS:
        ex = {'messages': msgs}
        assert c.count(ex).n_tokens == cookbook_count(msgs, enc)
        assert c.count(ex).n_trained == len(enc.encode(msgs[-1]['content']))

def test_hand_checked_example():
    # user(1) Hi(1) assistant(1) Hello!(2) + 3 per message + 3 priming
    ex = {'messages': [{'role': 'user', 'content': 'Hi'}, {'role': 'assistant', 'content': 'Hello!'}]}
    assert get_counter('gpt-4o').count(ex) == TokenCount(14, 2)
    assert get_counter('gpt-3.5-turbo').count(ex) == TokenCount(14, 2)

def test_weight_zero_is_seen_but_not_trained():
    c, enc = get_counter('gpt-4o-mini'), load_encoding('o200k_base')
    msgs = [{'role': 'user', 'content': 'a'}, {'role': 'assistant', 'content': 'first reply', 'weight': 0},
            {'role': 'user', 'content': 'b'}, {'role': 'assistant', 'content': 'second reply', 'weight': 1}]
    tc = c.count({'messages': msgs})
    assert tc.n_trained == len(enc.encode('second reply'))
    # the weight key itself is not encoded
    assert tc.n_tokens == c.count({'messages': [{k: v for k, v in m.items() if k != 'weight'} for m in msgs]}).n_tokens

def test_tools_cookbook_example():
    # the cookbook's get_current_weather example: 101 prompt tokens on gpt-4o / gpt-4o-mini (API-reported)
    tools = [{'type': 'function', 'function': {'name': 'get_current_weather', 'description': 'Get the current weather in a given location',
              'parameters': {'type': 'object', 'properties': {
                  'location': {'type': 'string', 'description': 'The city and state, e.g. San Francisco, CA'},
                  'unit': {'type': 'string', 'description': 'The unit of temperature to return', 'enum': ['celsius', 'fahrenheit']}},
                  'required': ['location']}}}]
    msgs = [{'role': 'system', 'content': 'You are a helpful assistant that can answer to questions about the weather.'},
            {'role': 'user', 'content': "What's the weather like in San Francisco?"}]
    assert get_counter('gpt-4o-mini').messages(msgs, tools) == 101
    assert get_counter('gpt-4o').count({'messages': msgs, 'tools': tools}).n_tokens == 101

def test_tool_calls_and_dpo():
    c, enc = get_counter('gpt-4o-mini'), load_encoding('o200k_base')
    call = {'role': 'assistant', 'content': None, 'tool_calls': [{'id': 'c1', 'type': 'function', 'function': {'name': 'lookup', 'arguments': '{"id": 7}'}}]}
    tc = c.count({'messages': [{'role': 'user', 'content': 'x'}, call]})
    assert tc.n_trained == 3 + len(enc.encode('lookup')) + len(enc.encode('{"id": 7}'))
    dpo = {'input': {'messages': [{'role': 'user', 'content': 'Hi'}]},
           'preferred_output': [{'role': 'assistant', 'content': 'Hello!'}], 'non_preferred_output': [{'role': 'assistant', 'content': 'Go away'}]}
    tc = c.count(dpo)
    assert tc.n_trained == len(enc.encode('Hello!')) + len(enc.encode('Go away'))
    assert tc.n_tokens == (3 + 1 + 1) + 3 + (3 + 1 + 2) + (3 + 1 + len(enc.encode('Go away')))

def test_count_file_parallel_equals_serial_equals_per_example(tmp_path):
    objs = [json.loads(l) for l in SAMPLE.read_text().splitlines() if l.strip()]
    # a bigger file with blank and broken lines, which the counter skips (the validator reports them)
    p = tmp_path/'d.jsonl'
    lines = [json.dumps(o, ensure_ascii=False) for o in objs * 5]
    lines[3], lines[10] = '', '{not json'
    p.write_text('\n'.join(lines) + '\n')
    s1 = count_tokens(p, 'gpt-4o-mini', workers=1)
    s2 = count_tokens(p, 'gpt-4o-mini', workers=2, chunk=3000)
    c = get_counter('gpt-4o-mini')
    expect = [(i + 1, c.count(json.loads(l)).n_tokens) for i, l in enumerate(lines) if l and not l.startswith('{not')]
    assert list(zip(s1.lines, s1.per_example)) == expect
    assert list(zip(s2.lines, s2.per_example)) == expect
    assert (s1.n_tokens, s1.n_trained, s1.n_examples) == (s2.n_tokens, s2.n_trained, len(objs) * 5 - 2)

def test_count_dataset_and_view():
    from finetune_nb.data import ChatDataset
    ds = ChatDataset(SAMPLE)
    whole = count_tokens(SAMPLE, 'gpt-4o-mini', workers=1)
    assert count_tokens(ds, 'gpt-4o-mini', workers=1).n_tokens == whole.n_tokens
    view = ds[5:20]
    sv = count_tokens(view, 'gpt-4o-mini', workers=2, chunk=500)
    assert list(sv.lines) == [view.line_of(i) for i in range(len(view))]
    assert list(sv.per_example) == list(whole.per_example)[5:20]
    exs = list(view)
    assert count_tokens(exs, 'gpt-4o-mini').n_tokens == sv.n_tokens

def test_truncation_and_billing():
    st = count_tokens(SAMPLE, 'gpt-4o-mini', limit=120, workers=1)
    over = [n for n in st.per_example if n > 120]
    assert st.n_truncated == len(over) > 0
    assert st.n_billing == st.n_tokens - sum(over) + 120 * len(over)
    assert count_tokens(SAMPLE, 'gpt-3.5-turbo-0613').limit == 4096   # from the price table

def test_encoding_file_search_and_cache(tmp_path, monkeypatch):
    monkeypatch.setenv('FTNB_CACHE', str(tmp_path/'cache'))
    monkeypatch.setenv('TIKTOKEN_CACHE_DIR', str(tmp_path/'tk'))
    p = find_encoding_file('cl100k_base', download=False)
    assert p is not None and p.name == 'cl100k_base.tiktoken'
    # remembered in finetune_nb's cache and in tiktoken's own (named by the sha1 of the URL)
    assert (tmp_path/'cache'/'tiktoken'/'cl100k_base.tiktoken').exists()
    assert (tmp_path/'tk'/'9b5ad71b2ce5302211f9c61530b329a4922fc6a4').exists()
    # $FTNB_TIKTOKEN_DIR comes first; a corrupt file there is skipped, not trusted
    d = tmp_path/'mine'; d.mkdir()
    (d/'cl100k_base.tiktoken').write_bytes(b'corrupt')
    monkeypatch.setenv('FTNB_TIKTOKEN_DIR', str(d))
    assert find_encoding_file('cl100k_base', download=False) != d/'cl100k_base.tiktoken'

def test_no_encoding_means_flagged_estimate_without_hanging(tmp_path, monkeypatch):
    import tiktoken.registry as reg
    monkeypatch.setattr(T, '_candidates', lambda name: iter([tmp_path/'nothing']))
    monkeypatch.delitem(reg.ENCODINGS, 'o200k_base', raising=False)
    monkeypatch.setattr(T, '_CORES', {})
    import urllib.request, threading
    asked, release = threading.Event(), threading.Event()
    def never(*a, **k): asked.set(); release.wait(60)                  # a network that never answers
    monkeypatch.setattr(urllib.request, 'urlopen', never)
    try:
        assert find_encoding_file('o200k_base', download=True, timeout=0.5) is None
        assert asked.is_set() and not release.is_set()                # it asked, and gave up while the request still hangs
    finally: release.set()
    monkeypatch.setenv('FTNB_OFFLINE', '1')
    with pytest.warns(UserWarning, match='estimate'):
        c = get_counter('gpt-4o-mini')
    assert not c.exact
    st = count_tokens(SAMPLE, c)
    assert not st.exact and st.n_tokens > 0 and 'ESTIMATE' in str(st)

def test_unknown_model_warns_and_encoding_override():
    with pytest.warns(UserWarning, match='estimates'):
        assert not get_counter('my-deployment').exact
    c = get_counter('my-deployment', encoding='o200k_base')
    assert c.exact and c.encoding == 'o200k_base'

# --- open models: the chat template -------------------------------------------------------------------

@pytest.fixture(scope='module')
def tiny(tmp_path_factory):
    from finetune_nb.testing import make_tiny_model
    return make_tiny_model(tmp_path_factory.mktemp('tiny')/'m')

def test_open_model_counts_match_the_chat_template(tiny):
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(tiny)
    c = get_counter(str(tiny))
    assert c.exact and c.masked
    for msgs in CHATS:
        d = tok.apply_chat_template(msgs, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
        assert c.count({'messages': msgs}) == TokenCount(len(d['input_ids']), sum(d['assistant_masks']))
    # the whole sample, one by one vs count_tokens
    objs = [json.loads(l) for l in SAMPLE.read_text().splitlines() if l.strip()]
    st = count_tokens(SAMPLE, str(tiny))
    assert st.n_examples == len(objs) == 37
    plain = [(i, o) for i, o in enumerate(objs) if all(isinstance(m.get('content'), str) for m in o['messages'])]
    assert len(plain) == 36   # the one with a tool call has an assistant message without content
    assert [st.per_example[i] for i, _ in plain] == [len(tok.apply_chat_template(o['messages'], tokenize=True, return_dict=True)['input_ids']) for _, o in plain]

def test_open_model_weight_zero_and_no_markers(tiny):
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(tiny)
    msgs = [{'role': 'user', 'content': 'Hallo'}, {'role': 'assistant', 'content': 'Guten Tag', 'weight': 0},
            {'role': 'user', 'content': 'Danke'}, {'role': 'assistant', 'content': 'Gerne!'}]
    reply = len(tok('Gerne!<|im_end|>', add_special_tokens=False)['input_ids'])
    assert get_counter(str(tiny)).count({'messages': msgs}).n_trained == reply
    # the same template without generation markers: trained tokens by prefix difference (reply, <|im_end|> and newline)
    tok.chat_template = tok.chat_template.replace('{% generation %}', '').replace('{% endgeneration %}', '')
    c = get_counter(tok)
    assert not c.masked
    assert c.count({'messages': msgs}).n_trained == reply + len(tok('\n', add_special_tokens=False)['input_ids'])

# --- the validator hook --------------------------------------------------------------------------------

def _write(p, objs): p.write_text(''.join(json.dumps(o, ensure_ascii=False) + '\n' for o in objs)); return p

def test_validate_reports_tokens_and_truncation(tmp_path):
    from finetune_nb.validate import validate
    objs = [json.loads(l) for l in SAMPLE.read_text().splitlines() if l.strip()]
    long = {'messages': [{'role': 'user', 'content': 'Bitte lesen: ' + 'Zahlung Konto Rechnung ' * 2000}, {'role': 'assistant', 'content': 'Gelesen.'}]}
    p = _write(tmp_path/'t.jsonl', objs[:12] + [long])
    rep = validate(p, model='gpt-3.5-turbo-0613')   # 4,096 tokens per example
    tok = rep.stats['tokens']
    assert tok['n_examples'] == 13 and tok['n_truncated'] == 1 and tok['truncated_lines'] == [13] and tok['exact']
    assert any(f.code == 'too_many_tokens' and f.line == 13 for f in rep.warnings)
    assert tok['n_billing'] == tok['n_tokens'] - tok['max'] + 4096   # the long one billed up to the limit

def test_validate_counts_only_valid_lines_in_one_pass_on_every_core(tmp_path):
    from finetune_nb.validate import validate
    objs = [json.loads(l) for l in SAMPLE.read_text().splitlines() if l.strip()]
    bad = {'messages': [{'role': 'wizard', 'content': 'x'}, {'role': 'assistant', 'content': 'y'}]}
    p = _write(tmp_path/'t.jsonl', objs + [bad] + objs[:3])
    serial = validate(p, model='gpt-4o-mini', workers=1)
    whole = count_tokens(SAMPLE, 'gpt-4o-mini', workers=1)
    assert serial.tokens.n_examples == 40 and serial.tokens.n_tokens == whole.n_tokens + sum(whole.per_example[:3])
    assert 38 not in serial.tokens.lines   # the invalid line is not counted
    # two processes on tiny chunks: the same report, line for line
    par = validate(p, model='gpt-4o-mini', workers=2, chunk=700)
    a, b = serial.to_dict(), par.to_dict()
    assert a == b and a['sha256'] == hashlib.sha256(p.read_bytes()).hexdigest()
    assert list(par.tokens.lines) == list(serial.tokens.lines)

def test_estimate_from_a_report_does_not_count_again(tmp_path, monkeypatch):
    from finetune_nb.validate import validate
    import finetune_nb.cost as C
    rep = validate(SAMPLE, model='gpt-4o-mini')
    direct = C.estimate_training_cost(SAMPLE, 'gpt-4o-mini')
    monkeypatch.setattr(C, 'count_tokens', lambda *a, **k: pytest.fail('counted again'))
    e = C.estimate_training_cost(rep, 'gpt-4o-mini-2024-07-18')   # same encoding and limit: the report's counts
    assert (e.tokens_per_epoch, e.n_examples, e.usd, e.sha256) == (direct.tokens_per_epoch, 37, direct.usd, rep.sha256)

@pytest.mark.needs('transformers')
def test_unknown_hub_id_offline_is_a_quick_estimate(monkeypatch):
    import transformers
    monkeypatch.delenv('HF_HUB_OFFLINE', raising=False)
    monkeypatch.setattr(T, 'hub_reachable', lambda timeout=2.0: False)   # a laptop without internet
    # the hub client would retry for about a minute: it must not be asked at all
    monkeypatch.setattr(transformers.AutoTokenizer, 'from_pretrained', lambda *a, **k: pytest.fail('asked the hub'))
    with pytest.warns(UserWarning, match='could not load the tokenizer'):
        c = get_counter('nobody/no-such-model')
    assert not c.exact
    assert count_tokens(SAMPLE, c).n_examples == 37

def test_spawned_workers_give_the_same_report(tmp_path, monkeypatch):
    "Where workers are spawned, not forked (macOS, Windows), they load their own encoding and agree on digests"
    import multiprocessing as mp
    from finetune_nb.validate import validate
    objs = [json.loads(l) for l in SAMPLE.read_text().splitlines() if l.strip()]
    p = _write(tmp_path/'t.jsonl', objs + objs[:4])   # four duplicates, found across chunks
    serial = validate(p, model='gpt-4o-mini', workers=1)
    monkeypatch.setattr(T, 'mp_context', lambda: mp.get_context('spawn'))
    import finetune_nb.validate as V
    monkeypatch.setattr(V, 'mp_context', lambda: mp.get_context('spawn'))
    spawned = validate(p, model='gpt-4o-mini', workers=2, chunk=2000)
    assert spawned.to_dict() == serial.to_dict() and serial.counts['duplicate'] == 4
    assert count_tokens(p, 'gpt-4o-mini', workers=2, chunk=2000).n_tokens == serial.tokens.n_tokens

def test_open_model_tokenizer_loads_without_torch(tiny):
    "A converted folder's tokenizer is the one AutoTokenizer makes, without importing torch (seconds on a laptop)"
    code = ('import sys, json; from finetune_nb.tokens import load_hf_tokenizer; tok = load_hf_tokenizer(sys.argv[1]); '
            'm = [{"role": "user", "content": "Grüß Gott"}, {"role": "assistant", "content": "Servus"}]; '
            'print(json.dumps([type(tok).__name__, "torch" in sys.modules, tok.apply_chat_template(m, tokenize=False)]))')
    out = subprocess.run([sys.executable, '-c', code, str(tiny)], capture_output=True, text=True, check=True).stdout
    name, torch_loaded, text = json.loads(out.strip().splitlines()[-1])
    from transformers import AutoTokenizer
    auto = AutoTokenizer.from_pretrained(tiny)
    assert (name, torch_loaded) == (type(auto).__name__, False)
    assert text == auto.apply_chat_template([{'role': 'user', 'content': 'Grüß Gott'}, {'role': 'assistant', 'content': 'Servus'}], tokenize=False)
