"Tests of finetune_nb.label that need subprocesses, kills, or more data than the notebook's demonstrations"
import json, os, random, shutil, signal, subprocess, sys, textwrap, time
from pathlib import Path
import pytest
from finetune_nb.core import DataError, ConfigError, sha256_file, asset_path
from finetune_nb.data import ChatDataset, sample_path
from finetune_nb.label import LabelSession, LabelPanel, source_fingerprint, journal_path
from finetune_nb.validate import validate

SAMPLE = [json.loads(l) for l in sample_path().read_text(encoding='utf-8').splitlines() if l.strip()]

def make_data(path, n, seed=0):
    "`n` distinct chat examples built from the sample (each reply carries its number)"
    rng = random.Random(seed)
    with open(path, 'w', encoding='utf-8') as f:
        for k in range(n):
            d = json.loads(json.dumps(SAMPLE[k % len(SAMPLE)]))
            d['messages'][-1]['content'] = f'{d["messages"][-1]["content"]} (Nr. {k}, {rng.choice(["Konto", "Karte", "Zahlung"])})'
            f.write(json.dumps(d, ensure_ascii=rng.random() < 0.5) + '\n')
    return Path(path)

@pytest.fixture
def data(tmp_path): return make_data(tmp_path/'train.jsonl', 500)


# ---- durability ---------------------------------------------------------------------------------

CHILD = textwrap.dedent('''
    import sys, time
    from finetune_nb.label import LabelSession
    s = LabelSession(sys.argv[1], labels=('x',))
    print('ready', flush=True)
    for k in range(len(s)):
        op = k % 5
        if op == 0: s.accept(i=k)
        elif op == 1: s.reject(i=k)
        elif op == 2: s.edit(f'fix {k}', i=k)
        elif op == 3: s.tag('x', i=k)
        else:
            s.accept(i=k); print(k, 'accept', flush=True)
            s.undo()
        print(k, 'done', flush=True)
    time.sleep(60)
''')

def test_sigkill_loses_no_acknowledged_action(tmp_path):
    src = make_data(tmp_path/'big.jsonl', 3000)
    before = sha256_file(src)
    (tmp_path/'child.py').write_text(CHILD)
    p = subprocess.Popen([sys.executable, str(tmp_path/'child.py'), str(src)], stdout=subprocess.PIPE, text=True)
    acks = []
    try:
        assert p.stdout.readline().strip() == 'ready'
        while sum(a[1] == 'done' for a in acks) < 300:
            line = p.stdout.readline()
            assert line, 'child died early'
            acks.append(line.split())
    finally:
        os.kill(p.pid, signal.SIGKILL)  # in the middle of the stream: it is still writing
        rest, _ = p.communicate()
    acks += [l.split() for l in rest.splitlines() if l.strip()]  # printed before the kill: acknowledged too
    s = LabelSession(src)
    done = {int(k) for k, what in acks if what == 'done'}
    assert len(done) >= 300
    for k in done:
        expect = ['accepted', 'rejected', 'unreviewed', 'unreviewed', 'unreviewed'][k % 5]
        assert s.status_name(k) == expect, k
        if k % 5 == 2: assert s.view(k)['reply'] == f'fix {k}'
        if k % 5 == 3: assert s.view(k)['tags'] == ['x']
    last = max(done)
    half = [int(k) for k, what in acks if what == 'accept' and int(k) not in done]
    for k in half: assert s.status_name(k) in ('accepted', 'unreviewed')  # the undo may or may not have landed
    for k in range(last + 2, len(s)): assert s.status_name(k) == 'unreviewed'
    assert sha256_file(src) == before  # the source is never written
    assert s.state.n_status == [s.status.count(bytes([k])) for k in range(8)]
    s.accept(i=len(s) - 1)  # and the journal takes new actions after the crash
    s.close()
    assert LabelSession(src).status_name(len(s) - 1) == 'accepted'

def test_torn_and_garbage_lines_never_crash(data):
    s = LabelSession(data)
    for _ in range(5): s.accept()
    s.close()
    j = s.journal
    with open(j, 'ab') as f: f.write(b'{"op": "reject", "i": 7, "seq": 99, "se')   # torn by a crash
    s = LabelSession(data); s.reject(); s.close()                                 # a new record after the torn one
    with open(j, 'ab') as f:
        f.write(b'[1, 2]\n{"op": "tag", "i": 123456789, "seq": 100, "set": {}}\n\xff\xfe\n'
                b'{"op": "accept", "i": 7, "seq": 101, "set": {"s": "yes"}}\n{"op": "undo", "i": 7, "of": 3, "prev": {"s": 99}}\n'
                b'{"op": "explode", "i": 7, "seq": 102, "set": {}}\n\x00\x00\x00\n{"op"')
    s = LabelSession(data)
    assert (s.n_torn, s.n_bad) == (4, 5)
    assert (s.counts()['accepted'], s.counts()['rejected'], s.status_name(5), s.status_name(7)) == (5, 1, 'rejected', 'unreviewed')
    s.close()

def test_journal_for_another_file_is_refused(tmp_path, data):
    s = LabelSession(data); s.accept(); s.close()
    other = make_data(tmp_path/'other.jsonl', 400)
    with pytest.raises(DataError, match='journal_mismatch'): LabelSession(other, journal=s.journal)
    b = bytearray(data.read_bytes()); b[-3:-2] = b'X'; data.write_bytes(bytes(b))
    with pytest.raises(DataError, match='train.jsonl changed since'): LabelSession(data)

def test_edit_in_the_middle_of_a_big_file_is_caught(tmp_path):
    big = make_data(tmp_path/'big.jsonl', 7000)  # ~4.6 MB: the middle is outside the fingerprinted ends
    s = LabelSession(big)
    for i in range(3400, 3600): s.accept(i=i)
    s.close()
    b = bytearray(big.read_bytes())
    k = b.index(b'(Nr. 3500,')
    b[k:k+10] = b'(Nr. 35X0,'  # same size, same first and last MiB
    time.sleep(0.01)
    big.write_bytes(bytes(b))
    with pytest.raises(DataError, match='changed since it was labelled'): LabelSession(big)

def test_a_view_has_its_own_journal(data):
    ds = ChatDataset(data)
    a, b = LabelSession(ds[:100]), LabelSession(ds[100:])
    assert a.journal != b.journal != journal_path(ds)
    b.accept(); assert b.view(0)['line'] == 101
    a.filter(text='Nr. 42,'); assert a.i == 42
    b.close(); a.close()
    with pytest.raises(DataError, match='journal_mismatch'): LabelSession(ds[:50], journal=a.journal)

def test_two_processes_cannot_share_a_journal(data, tmp_path):
    s = LabelSession(data)
    code = f'from finetune_nb.label import LabelSession\nLabelSession({str(data)!r})'
    r = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True)
    assert r.returncode != 0 and 'open in another process' in r.stderr
    s2 = LabelSession(data)  # the same process re-running a cell takes over
    with pytest.raises(ConfigError, match='closed'): s.accept()
    s2.accept()
    del s, s2  # a session dropped without close() releases its lock
    LabelSession(data).close()

HOLDER = textwrap.dedent("""
    import sys
    from finetune_nb.label import LabelSession
    s = LabelSession(sys.argv[1])
    s.accept()
    print('open', flush=True)
    sys.stdin.readline()
    s.close()
    print('closed', flush=True)
    sys.stdin.readline()
""")

def test_the_lock_says_how_to_close_the_other_session(data, tmp_path):
    (tmp_path/'holder.py').write_text(HOLDER)
    p = subprocess.Popen([sys.executable, str(tmp_path/'holder.py'), str(data)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == 'open'
        with pytest.raises(ConfigError) as e: LabelSession(data)
        msg = str(e.value)
        assert 'open in another process' in msg and '.close()' in msg and 'Shut Down Kernel' in msg
        assert f'{journal_path(ChatDataset(data)).name}.lock' in msg and 'panel.session.close()' in msg   # which lock, and a panel's way
        assert Path(f'{journal_path(ChatDataset(data))}.lock').exists()   # filelock's lock file, beside the journal
        p.stdin.write('\n'); p.stdin.flush()
        assert p.stdout.readline().strip() == 'closed'                     # the other session closed: the lock is free
        s = LabelSession(data)
        assert s.status_name(0) == 'accepted'
        s.accept(); s.close()
    finally:
        p.kill(); p.communicate()

def test_a_refused_open_releases_the_lock(data, tmp_path):
    s = LabelSession(data); s.accept(); s.close()
    other = make_data(tmp_path/'other.jsonl', 20)
    with pytest.raises(DataError, match='journal_mismatch'): LabelSession(other, journal=s.journal)
    code = f'from finetune_nb.label import LabelSession\nLabelSession({str(data)!r}).close()'
    r = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr

def test_a_symlink_shares_the_journal(data, tmp_path):
    s = LabelSession(data); s.accept(); s.close()
    (tmp_path/'link.jsonl').symlink_to(data)
    (tmp_path/'elsewhere').mkdir(); (tmp_path/'elsewhere'/'alias.jsonl').symlink_to(data)
    for link in (tmp_path/'link.jsonl', tmp_path/'elsewhere'/'alias.jsonl', tmp_path/'elsewhere'/'..'/'train.jsonl'):
        s = LabelSession(link)
        assert s.journal == tmp_path/'train.labels.jsonl' and s.status_name(0) == 'accepted', link
        s.reject(i=1); s.close()
    assert LabelSession(data).status_name(1) == 'rejected'
    assert sorted(p.name for p in tmp_path.glob('*.labels*.jsonl')) == ['train.labels.jsonl']

def test_export_refuses_a_changed_source(data, tmp_path):
    "Issue 11 part 3: accept 3, another program prepends a line, export: refused before anything is written"
    s = LabelSession(data)
    for _ in range(3): s.accept()
    old = s.export(tmp_path/'old.jsonl').path.read_bytes()
    data.write_bytes(json.dumps({'messages': [{'role': 'user', 'content': 'nobody reviewed me'}]}).encode() + b'\n' + data.read_bytes())
    for out in (tmp_path/'old.jsonl', tmp_path/'new.jsonl'):
        with pytest.raises(DataError, match='journal_mismatch') as e: s.export(out)
        assert 'changed since this session opened it' in str(e.value)
    assert (tmp_path/'old.jsonl').read_bytes() == old and not (tmp_path/'new.jsonl').exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith('.')] == []  # no temp file left behind
    n = len(s.journal.read_text().splitlines())
    assert 'changed since this session opened it' in s.view()['error']        # the panel shows why, not the wrong example
    for act in (s.accept, s.reject, lambda: s.edit('x'), lambda: s.tag('t'), lambda: s.add([{'role': 'assistant', 'content': 'x'}]), s.undo):
        with pytest.raises(DataError, match='journal_mismatch'): act()         # nor is a label journaled
    assert len(s.journal.read_text().splitlines()) == n
    s.close()

def test_export_checks_the_middle_of_a_file_that_kept_its_size(tmp_path):
    big = make_data(tmp_path/'big.jsonl', 7000)  # ~4.6 MB: the middle is outside the fingerprinted ends
    s = LabelSession(big)
    for i in range(3400, 3600): s.accept(i=i)
    os.utime(big, ns=(time.time_ns(), time.time_ns() + 10**9))                 # touched, not changed: fine
    assert len(s.export(tmp_path/'a.jsonl')) == 200
    b = bytearray(big.read_bytes()); k = b.index(b'(Nr. 3500,'); b[k:k+10] = b'(Nr. 35X0,'
    big.write_bytes(bytes(b)); os.utime(big, ns=(time.time_ns(), time.time_ns() + 2 * 10**9))
    with pytest.raises(DataError, match='changed since it was labelled'): s.export(tmp_path/'b.jsonl')
    assert not (tmp_path/'b.jsonl').exists()
    s.close()

def test_export_refuses_a_file_changed_while_it_was_read(data, tmp_path, monkeypatch):
    s = LabelSession(data)
    for _ in range(5): s.accept()
    (tmp_path/'out.jsonl').write_text('before\n')
    real = s._export_lines
    def lines(which):
        for k, d in enumerate(real(which)):
            if k == 2: data.write_bytes(b'\n' + data.read_bytes())             # another program, mid-export
            yield d
    monkeypatch.setattr(s, '_export_lines', lines)
    with pytest.raises(DataError, match='journal_mismatch'): s.export(tmp_path/'out.jsonl')
    assert (tmp_path/'out.jsonl').read_text() == 'before\n'
    s.close()

def test_undo_survives_restart(data):
    s = LabelSession(data, undo_levels=3)
    s.accept(); s.reject(); s.edit('neu'); s.tag('t'); n = s.add([{'role': 'user', 'content': 'hi'}, {'role': 'assistant', 'content': 'Hallo!'}])
    s.close()
    s = LabelSession(data, undo_levels=3)
    assert s.i == n and s.counts()['added'] == 1
    assert s.undo() == n and s.counts()['added'] == 0 and s.i != n
    assert s.undo() == 2 and s.view(2)['tags'] == []
    assert s.undo() == 2 and not s.view(2)['edited']
    assert s.undo() is None  # three levels only
    assert s.status_name(1) == 'rejected'
    s.close()
    s = LabelSession(data)
    assert (s.status_name(0), s.status_name(1), s.counts()['added'], s.counts()['edited']) == ('accepted', 'rejected', 0, 0)
    assert s.state.n_status == [s.status.count(bytes([k])) for k in range(8)]  # the running counts agree with a recount
    s.close()


# ---- search and filters -------------------------------------------------------------------------

@pytest.mark.parametrize('chunk', [53, 777, 1 << 20])
def test_search_matches_brute_force(data, chunk):
    s = LabelSession(data)
    s._chunk = chunk
    s.edit('Ein völlig neuer Text mit ZEBRA', i=17); s.edit('noch ein zebra', i=400)
    texts = [json.dumps(json.loads(l), ensure_ascii=False) for l in data.read_text(encoding='utf-8').splitlines()]
    for q in ['karte', 'Nr. 1', 'ÜBERWEISUNG', 'zebra', '„Karten“', 'zzz-none']:
        want = [i for i in range(len(s)) if q.casefold() in '\n'.join(m.get('content') or '' for m in s.view(i)['messages']).casefold()]
        s.goto(0); s.filter(text=q)
        got = [s.i] if s.matches(s.i) else []
        while (j := s.next()) is not None: got.append(j)
        assert got == want, q
        s.filter('all'); s.goto(len(s) - 1)
        assert s.filter(text=q) == (len(s) - 1 if want and want[-1] == len(s) - 1 else want[0] if want else None), q  # wraps round
        if want:
            s.goto(len(s) - 1); back = [s.i] if s.matches(s.i) else []
            while (j := s.prev()) is not None: back.append(j)
            assert back == want[::-1], q
    assert 17 in [i for i in range(len(s)) if (s.filter(text='zebra'), s.goto(i), s.matches(i))[2]]
    s.close()

def test_filters_combine(data):
    s = LabelSession(data)
    for i in range(0, 100, 3): s.accept(i=i)
    for i in range(0, 100, 9): s.tag('dup', i=i)
    s.goto(0)
    assert s.filter('accepted', tag='dup') == 0
    got = [0]
    while (j := s.next()) is not None: got.append(j)
    assert got == list(range(0, 100, 9))
    s.filter('unreviewed'); s.goto(0); s.filter('unreviewed')
    assert s.i == 1 and s.next() == 2 and s.next() == 4
    s.accept()  # auto-advance follows the filter
    assert s.i == 5
    s.reject(i=50); assert s.i == 5  # acting on another example leaves the reviewer where they are
    s.close()


# ---- export and validation ----------------------------------------------------------------------

def test_exports_validate_clean(tmp_path):
    src = shutil.copy(sample_path(), tmp_path/'s.jsonl')
    s = LabelSession(src)
    for i in range(len(s)):
        if i % 7 == 3: s.reject(i=i)
        else: s.accept(i=i)
    s.edit('Sie können Ihre Karte jederzeit in der App sperren.', i=0)
    s.add([{'role': 'system', 'content': 'Sie sind der Kundenservice-Assistent der Alpenbank Digital.'},
           {'role': 'user', 'content': 'Gibt es eine Kreditkarte?'}, {'role': 'assistant', 'content': 'Ja, die Alpenbank Mastercard Gold.'}])
    acc, rej = s.export(tmp_path/'acc.jsonl'), s.export(tmp_path/'rej.jsonl', 'rejected')
    prefs = s.export(tmp_path/'prefs.jsonl', 'preferences')
    assert (len(acc), len(rej), len(prefs)) == (33, 5, 1)
    for f in (acc, prefs): r = validate(f); assert r.ok, str(r)
    assert acc[0].reply.startswith('Sie können Ihre Karte jederzeit') and acc[-1].reply.startswith('Ja, die Alpenbank')
    assert [e.messages for e in rej] == [SAMPLE[i]['messages'] for i in range(len(SAMPLE)) if i % 7 == 3]
    df = s.to_frame()
    assert len(df) == 38 and set(df.status) == {'accepted', 'rejected'} and df.edited.sum() == 1
    s.close()

def test_preference_session(tmp_path):
    src = tmp_path/'cands.jsonl'
    with open(src, 'w') as f:
        for k in range(12):
            f.write(json.dumps({'messages': [{'role': 'user', 'content': f'Frage {k}?'}], 'candidates': [f'gut {k}', f'schlecht {k}']}) + '\n')
    s = LabelSession(src)
    assert s.mode == 'preference'
    order = {s.view(i)['a']['content'][:3] for i in range(12)}
    assert order == {'gut', 'sch'}  # both orders are shown
    for i in range(12):
        v = s.view(i)
        s.prefer('a' if v['a']['content'].startswith('gut') else 'b', i=i)
    s.reject(i=11)
    out = s.export(tmp_path/'dpo.jsonl', 'preferences')
    assert len(out) == 11 and all(e.preferred_output[0]['content'].startswith('gut') for e in out)
    assert validate(out).ok
    sft = s.export(tmp_path/'sft.jsonl')
    assert [e.reply for e in sft][:2] == ['gut 0', 'gut 1']
    s.close()

def test_broken_line_can_only_be_rejected(tmp_path):
    src = tmp_path/'b.jsonl'
    src.write_text(json.dumps(SAMPLE[0]) + '\n{"messages": [oops\n' + json.dumps(SAMPLE[1]) + '\n')
    s = LabelSession(src)
    s.goto(1)
    assert 'line 2' in s.view()['error']
    with pytest.raises(DataError, match='only be rejected'): s.accept()
    s.reject()
    assert s.export(tmp_path/'rej.jsonl', 'rejected').raw(0) == b'{"messages": [oops'
    s.close()


# ---- panel --------------------------------------------------------------------------------------

def test_panel_escapes_and_survives_restart(tmp_path):
    src = tmp_path/'x.jsonl'
    evil = '<img src=x onerror="alert(1)"><script>alert(2)</script>'
    src.write_text(json.dumps({'messages': [{'role': 'user', 'content': evil}, {'role': 'assistant', 'content': evil}]}) + '\n'
                   + json.dumps(SAMPLE[0]) + '\n')
    p = LabelPanel(LabelSession(src, labels=('<b>bold</b>',)))
    assert '<script>' not in p.html_chat.value and '<img' not in p.html_chat.value
    assert p.ta_reply.value == evil  # a text box shows text
    p.ta_reply.value = 'Sicher.'; p.tag_buttons['<b>bold</b>'].value = True; p.btn_accept.click()
    assert 'saved' in p.html_saved.value
    p.session.close()
    p2 = LabelPanel(LabelSession(src))
    p2.btn_back.click()
    assert p2.ta_reply.value == 'Sicher.' and p2.tag_buttons['<b>bold</b>'].value
    p2.btn_undo.click()
    assert p2.ta_reply.value == 'Sicher.' and p2.session.status_name(0) == 'unreviewed'
    p2.session.close()

def test_empty_file(tmp_path):
    (tmp_path/'e.jsonl').write_text('')
    s = LabelSession(tmp_path/'e.jsonl')
    assert s.counts()['total'] == 0 and s.next() is None and s.filter('unreviewed') is None
    with pytest.raises(ConfigError, match='has 0'): s.accept()
    p = LabelPanel(s)
    p.btn_accept.click()
    assert 'has 0' in p.html_msg.value and 'empty' in p.html_head.value
    s.close()

def test_a_failed_write_says_not_saved(data, monkeypatch):
    p = LabelPanel(LabelSession(data))
    p.btn_accept.click()
    def full(fd): raise OSError(28, 'No space left on device')
    monkeypatch.setattr(os, 'fsync', full)
    p.btn_skip.click()
    monkeypatch.undo()
    assert 'not saved' in p.html_saved.value and 'No space left' in p.html_msg.value
    p.btn_reject.click()
    assert 'closed' in p.html_msg.value          # nothing more is taken until the session is reopened
    s = LabelSession(data)                         # the journal is the truth: the unconfirmed skip may be there
    assert s.status_name(0) == 'accepted' and s.status_name(1) in ('skipped', 'unreviewed') and s.status_name(2) == 'unreviewed'
    s.close()

def test_a_vanished_source_is_a_clear_error_in_the_panel(data, tmp_path):
    p = LabelPanel(LabelSession(data))
    p.btn_accept.click()
    away = data.rename(tmp_path/'away.jsonl')      # moved away by another program
    p.btn_accept.click()
    assert 'cannot be read any more' in p.html_msg.value and 'not saved' in p.html_saved.value
    assert 'cannot be read any more' in p.html_chat.value
    away.rename(data)                                # back, unchanged: labelling goes on
    p.btn_accept.click()
    assert [p.session.status_name(i) for i in range(3)] == ['accepted', 'accepted', 'unreviewed']
    p.session.close()
