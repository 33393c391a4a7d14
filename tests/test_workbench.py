"""RunsPanel and Workbench driven from Python, as a person would click: with the simulator (fast) and with the
tiny local model (the `local` extra). Set `.value`, call the methods the buttons call, read what the panels show."""
import json, math, os, re, time
from pathlib import Path
import pytest

os.environ.setdefault('HF_HUB_OFFLINE', '1')
os.environ.setdefault('FTNB_NO_PROGRESS', '1')

import ipywidgets as widgets
import finetune_nb
from finetune_nb.core import ConfigError
from finetune_nb.data import sample_path, ChatDataset
from finetune_nb.runs import RunRegistry
from finetune_nb.backends import get_backend
from finetune_nb.simulator import serve
from finetune_nb.workbench import (RunsPanel, Workbench, CompareTab, TABS, runs_table, run_rows, run_cells, open_job, label_source,
                                   evaluate_run, eval_split, last_comparison)
from finetune_nb.explore import DataPanel

N_SAMPLE = 37
strip = lambda h: re.sub(r'<[^>]+>', '', h)   # the text a person reads in a cell

def wait_for(cond, timeout=60, what='a condition'):
    "Poll `cond()` until truthy (no fixed sleep stands in for readiness)"
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if r := cond(): return r
        time.sleep(0.02)
    pytest.fail(f'timed out after {timeout} s waiting for {what}')

def fake_run(reg, k, status='succeeded', n=20, valid=True, **kw):
    "A recorded run with a falling curve and no training behind it; `k` orders the ids as time does"
    r = reg.create('simulator', 'gpt-4o-mini-2024-07-18', sample_path(), cost={'usd': 0.0421}, run_id=f'20260101-00000{k}-fake')
    r.metrics.extend([{'step': i, 'loss': 2 * math.exp(-i / 8) + 0.2, 'total_steps': n} for i in range(1, n + 1)])
    if valid: r.metrics.extend([{'step': i, 'split': 'valid', 'loss': 2 * math.exp(-i / 8) + 0.3} for i in (5, 10, 15)])
    r.metrics.close()
    return r.update(status=status, **kw)

@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    "A cache of its own per test: comparison pairs and their verdicts are kept there, by content"
    monkeypatch.setenv('FTNB_CACHE', str(tmp_path/'cache'))

@pytest.fixture
def sim():
    s = serve(speed=50, seed=0)
    yield s
    s.stop()

@pytest.fixture(scope='module')
def tiny(tmp_path_factory):
    from finetune_nb.testing import make_tiny_model
    return make_tiny_model(tmp_path_factory.mktemp('model')/'tiny')

# --- the runs table ---------------------------------------------------------------------------------------------

def test_runs_table_reads_the_registry(tmp_path):
    reg = RunRegistry(tmp_path/'runs')
    a, b = fake_run(reg, 1), fake_run(reg, 2, 'failed', valid=False, error='quota <exceeded>')
    df = runs_table(reg)
    assert list(df.id) == [b.id, a.id]                                    # newest first
    assert list(df.status) == ['failed', 'succeeded'] and list(df.step) == [20, 20] and list(df.total) == [20, 20]
    assert df.loc[1, 'best_split'] == 'valid' and df.loc[0, 'best_split'] == 'train'
    assert df.loc[1, 'usd'] == 0.0421 and df.loc[1, 'eval'] is None
    cells = run_cells(run_rows(reg)[0])
    assert (strip(cells['steps']), strip(cells['cost']), strip(cells['loss'])) == ('20/20', '$0.04', f'{df.loc[0, "loss"]:.4f}')
    assert 'title="quota &lt;exceeded&gt;"' in cells['status']          # the error as the tooltip, escaped
    assert run_rows(tmp_path/'none') == []

def test_runs_panel_table_select_and_reopen(tmp_path):
    reg = RunRegistry(tmp_path/'runs')
    runs = [fake_run(reg, k) for k in range(3)]
    p = RunsPanel(reg.root, refresh=0, renderer='static')
    ids = [r.id for r in runs][::-1]
    assert [f['id'] for f in p.facts] == ids and (p.selected, p.current) == ([ids[0]], ids[0])
    texts = [w.value for w in p.grid.children if isinstance(w, widgets.HTML)]
    assert 'best' in map(strip, texts) and texts.count(run_cells(p.facts[0])['steps']) == 3
    # tick a second run: both curves overlaid in one plot
    p._rows[ids[2]][0].value = True
    assert p.selected == [ids[0], ids[2]] and sorted(s.name for s in p.plot.sources) == sorted([ids[0], ids[2]])
    assert len({t['color'] for t in p.plot.traces()}) == 2
    # open one: its details, and what can be done with it
    p._rows[ids[1]][1].click()
    assert p.current == ids[1] and ids[1] in p.html_run.value
    assert p.btn_stop.disabled and p.btn_resume.disabled and not p.btn_eval.disabled
    assert p._rows[ids[1]][1].button_style == 'info'
    p.close()
    # a restarted kernel: a new panel on the same folder shows the same runs, and the selected curves
    q = RunsPanel(reg.root, refresh=0, renderer='static', select=[ids[0], ids[2]])
    assert q.facts == p.facts[:0] + run_rows(reg.root) and sorted(s.name for s in q.plot.sources) == sorted([ids[0], ids[2]])
    assert q.plot.summary() == p.plot.summary()
    q.close()

def test_refresh_timer_runs_while_live_and_stops(tmp_path):
    reg = RunRegistry(tmp_path/'runs')
    live = fake_run(reg, 1, 'running')
    old = fake_run(reg, 2, 'running')
    t = time.time() - 3600   # a run left over from a dead kernel: unfinished, untouched for an hour
    for f in ('run.json', 'metrics.jsonl'): os.utime(old.folder/f, (t, t))
    p = RunsPanel(reg, refresh=0.05, renderer='static')
    assert p.live() == [live.id] and p.ticking
    live.metrics.append({'step': 21, 'loss': 0.123}); live.metrics.close()
    wait_for(lambda: p.facts[-1]['step'] == 21, 10, 'the table to show the new step')
    reg.get(live.id).update(status='succeeded')
    wait_for(lambda: not p.ticking, 10, 'the timer to stop once nothing is live')
    assert 'succeeded' in p._rows[live.id][2][0].value
    # closing stops it too
    reg.get(live.id).update(status='running')
    p.refresh(); assert p.ticking
    p.close()
    wait_for(lambda: not p.ticking, 10, 'the timer to stop after close')

def test_open_job_needs_the_simulator_that_ran_it(tmp_path):
    reg = RunRegistry(tmp_path/'runs')
    r = fake_run(reg, 1, 'running')
    with pytest.raises(ConfigError, match='cannot be attached here'): open_job(r)
    p = RunsPanel(reg, refresh=0, renderer='static')
    p.btn_attach.click()
    assert 'cannot be attached here' in p.html_msg.value and p.jobs == {}
    p.close()

# --- acting on runs: the simulator ---------------------------------------------------------------------------------

def test_runs_panel_attach_stop_resume_ask_evaluate(tmp_path, sim):
    be = get_backend('simulator', runs=tmp_path/'runs', sim=sim, poll=0.05, max_poll=0.2)
    sim.speed = 10
    job = be.launch(sample_path(), n_epochs=5)
    p = RunsPanel(be.runs, refresh=0.1, renderer='static', backends={'simulator': be})
    assert p.current == job.id and p.selected == [job.id]
    p.btn_attach.click()
    assert p.jobs[job.id].id == job.id and 'attached' in p.html_msg.value and p.ticking
    wait_for(lambda: (p.facts[0]['step'] or 0) > 0, 30, 'the timer to bring in steps')
    p.btn_stop.click()
    assert be.runs.get(job.id).status == 'cancelled' and 'stopped' in p.html_msg.value and not p.btn_resume.disabled
    sim.speed = 200
    p.btn_resume.click()
    assert 'resumed' in p.html_msg.value
    wait_for(lambda: p.refresh() == [] and p.facts[0]['status'] == 'succeeded', 60, 'the resumed run to succeed')
    assert not p.btn_ask.disabled and not p.btn_eval.disabled
    p.txt_prompt.value = 'Wie kündige ich mein Konto?'
    p.btn_ask.click()
    assert 'Konto' in p.html_out.value and '<b>you</b>' in p.html_out.value
    p.int_n.value = 4
    p.btn_eval.click()
    assert 'saved in' in p.html_msg.value and 'no held-out data' in p.html_out.value
    assert p.facts[0]['eval']['n'] == 4 and p.facts[0]['eval']['metric'] in ('chrf', 'rougeL')
    p.btn_card.click()
    md = p.out_card.outputs[0]['data']['text/markdown']
    assert md.startswith('# Model card') and 'data:image/svg+xml;base64,' in md and '## Evaluation' in md
    p.close()

# --- the Workbench -------------------------------------------------------------------------------------------------

def _files(folder): return sorted(p.name for p in Path(folder).iterdir())

def test_workbench_builds_tabs_when_asked(tmp_path):
    wb = Workbench(sample_path(), runs=tmp_path/'runs', speed=50)
    assert wb.tabs.titles == TABS and wb._panels == {} and wb.run is None
    assert 'sample_support_de.jsonl' in wb.html_head.value and f'{N_SAMPLE} examples' in wb.html_head.value
    bundle = wb._repr_mimebundle_()                              # displayed (no kernel here): the shown tab is built
    assert 'application/vnd.jupyter.widget-view+json' in bundle and list(wb._panels) == [0]
    wb.tabs.selected_index = TABS.index('Compare')               # a click on a tab builds it
    assert isinstance(wb.compare_panel, CompareTab) and wb.compare_panel.btn_compare.disabled
    assert 'No current run' in wb.compare_panel.html_info.value
    assert len(repr(wb)) < 200
    wb.close()

def test_label_export_becomes_the_data_set(tmp_path):
    assets = _files(Path(finetune_nb.__file__).parent/'assets')
    wb = Workbench(sample_path(), runs=tmp_path/'runs', speed=50)
    cost, data, train = wb.cost_panel, wb.data_panel, wb.train_panel    # built on the sample first
    assert cost.estimate.n_examples == N_SAMPLE
    lp = wb.label_panel
    for _ in range(12): lp.btn_accept.click()
    lp.btn_reject.click()
    assert lp.progress.value == 13
    lp.btn_export.click()
    ds = wb.dataset
    assert len(ds) == 12 and ds.path.parent == tmp_path/'runs'/'_labels' and ds.path.name.endswith('.reviewed.jsonl')
    assert 'now the data set of Data, Cost and Train' in wb.html_msg.value and '12 examples' in wb.html_head.value
    assert cost.estimate.n_examples == 12 and len(data.ds) == 12
    assert Path(train.txt_data.value).name == ds.path.name
    assert wb.label_panel is lp and lp.progress.value == 13        # labelling goes on where it was
    # another kind of export is only reported
    lp.dd_export.value = 'rejected'; lp.btn_export.click()
    assert wb.dataset is ds and 'stays' in wb.html_msg.value
    # set_data from code: every tab, and a new label session on it
    wb.set_data(sample_path())
    assert len(wb.dataset) == N_SAMPLE and cost.estimate.n_examples == N_SAMPLE and wb.label_panel is not lp
    assert _files(Path(finetune_nb.__file__).parent/'assets') == assets      # nothing written into the package
    wb.close()

def test_start_in_train_shows_in_runs_and_compare(tmp_path):
    wb = Workbench(sample_path(), runs=tmp_path/'runs', speed=50, poll=0.05)
    wb.tabs.selected_index = TABS.index('Runs')
    assert wb.runs_panel.facts == []
    tp = wb.train_panel
    tp.btn_start.click()
    job = tp.job
    assert job is not None and wb.run is job and job.id in wb.html_head.value
    rp = wb.runs_panel
    assert rp.facts[0]['id'] == job.id and rp.current == job.id and rp.selected == [job.id] and rp.jobs[job.id] is job
    wb.tabs.selected_index = TABS.index('Compare')
    ct = wb.compare_panel
    if not job.finished: assert ct.btn_compare.disabled and 'once it has succeeded' in ct.html_info.value
    wait_for(lambda: not ct.btn_compare.disabled, 60, 'the Compare tab to see the run succeed')    # by itself
    assert job.status == 'succeeded' and job.id in ct.html_info.value
    ct.int_n.value = 5
    ct.btn_compare.click()
    assert ct.report is not None and len(ct.report) == 5 and 'saved in' in ct.html_msg.value
    assert ct.label_panel is not None and ct.pairs.tally()['open'] == 5
    ct.label_panel.btn_a.click()
    assert ct.pairs.tally()['open'] == 4
    assert rp.facts[0]['eval'] is not None                           # the Runs tab shows the score
    # the pairs and their verdicts are kept in the run's folder, not in the cache
    assert ct.pairs.session.ds.path.parent == job.run.folder/'compare' and not (tmp_path/'cache'/'compare').exists()
    assert len(last_comparison(job)) == 5
    # a run opened in Runs becomes the current one, with its own comparison (none)
    other = fake_run(RunRegistry(tmp_path/'runs'), 1)
    rp.refresh(); rp.open_run(other.id)
    assert wb.run.id == other.id and other.id in ct.html_info.value
    assert ct.report is None and ct.pairs is None and ct.box_pairs.children == () and ct.html_report.value == ''
    rp.open_run(job.id)                                              # back: its comparison and the verdict given
    assert len(ct.report) == 5 and ct.pairs.tally()['open'] == 4 and 'as saved with the run' in ct.html_msg.value
    wb.close()

def test_a_reopened_run_shows_its_comparison_and_verdicts(tmp_path):
    wb = Workbench(sample_path(), runs=tmp_path/'runs', speed=100, poll=0.05)
    wb.train_panel.start()
    job = wb.run.wait(timeout=60)
    ct = wb.compare_panel
    ct.int_n.value = 4
    ct.btn_compare.click()
    side = 'a' if ct.pairs.view(0)['a']['content'] == ct.report.tuned.rows[0]['answer'] else 'b'
    ct.pairs.better(side, 0); ct.pairs.both_bad(1)
    wb.close()                                                       # the session ends (a kernel restart)
    wb = Workbench(sample_path(), runs=tmp_path/'runs')
    wb.runs_panel.open_run(job.id)
    ct = wb.compare_panel
    assert not ct.btn_compare.disabled and len(ct.report) == 4
    assert ct.pairs.tally() == {'win': 1, 'tie': 0, 'loss': 0, 'both_bad': 1, 'open': 2}
    assert [ex.preferred_output[0]['content'] for ex in ct.pairs.export(tmp_path/'human.jsonl')] == [ct.report.tuned.rows[0]['answer']]
    # a comparison file that is not one shows as one line, and the tab still works
    wb.close()
    (job.run.folder/'compare'/'last.json').write_text('[1, 2]')
    wb = Workbench(sample_path(), runs=tmp_path/'runs')
    wb.runs_panel.open_run(job.id)
    assert 'last.json' in wb.compare_panel.html_msg.value and wb.compare_panel.report is None and not wb.compare_panel.btn_compare.disabled
    wb.close()

def test_the_data_tab_shows_its_report_then_its_charts(tmp_path, monkeypatch):
    seen = []
    real = DataPanel.draw_charts
    monkeypatch.setattr(DataPanel, 'draw_charts', lambda self: seen.append((self.figs == {}, wb._boxes[0].children == (self,))) or real(self))
    wb = Workbench(sample_path(), runs=tmp_path/'runs')
    p = wb.data_panel
    assert seen == [(True, True)]            # on the screen, report and all, before any chart was drawn
    assert sorted(p.figs) == ['findings', 'messages', 'reply', 'system', 'tokens'] and p.html_summary.value
    wb.close()

def test_no_key_in_widget_state_or_reprs(tmp_path, monkeypatch):
    key = 'sk-proj-' + 'K3y' * 16
    monkeypatch.setenv('OPENAI_API_KEY', key)
    sim = serve(speed=50, seed=0, api_key=key)          # the simulator refuses any other key: the key is really used
    try:
        wb = Workbench(sample_path(), runs=tmp_path/'runs', sim=sim, poll=0.05)
        panels = [getattr(wb, f'{t.lower()}_panel') for t in TABS]
        wb.train_panel.btn_start.click()
        job = wb.run
        job.wait(timeout=60)
        assert job.status == 'succeeded'
        rp = wb.runs_panel
        rp.txt_prompt.value = 'Hallo'; rp.btn_ask.click()
        rp.int_n.value = 2; rp.btn_eval.click()
        wb.compare_panel.int_n.value = 2; wb.compare_panel.btn_compare.click()
        state = json.dumps(widgets.Widget.get_manager_state(drop_defaults=False), default=str)
        assert key not in state and key[:20] not in state
        for o in [wb, *panels, job, job.backend, job.run, rp.plot, wb.compare_panel.report]:
            assert key not in repr(o) and key[:20] not in repr(o), type(o)
        for f in (tmp_path/'runs').rglob('*'):
            if f.is_file(): assert key.encode() not in f.read_bytes(), f
        wb.close()
    finally: sim.stop()

# --- the tiny local model ---------------------------------------------------------------------------------------------

def test_workbench_with_the_tiny_model(tmp_path, tiny):
    spec = {'max_steps': 4, 'batch_size': 4, 'learning_rate': 1e-2, 'eval_split': 0.1}
    wb = Workbench(sample_path(), runs=tmp_path/'runs', backend='lora', model=str(tiny), spec=spec)
    assert wb.cost_model == str(tiny)
    tp = wb.train_panel
    tp.btn_start.click()
    job = wb.run
    assert job is not None and job.run.backend == 'lora'
    rp = wb.runs_panel
    assert rp.facts[0]['id'] == job.id
    job.wait(timeout=300)
    assert job.status == 'succeeded', job.log()
    rp.refresh()
    assert rp.facts[0]['step'] == 4 and rp.facts[0]['best_split'] == 'valid'
    rp.int_tokens.value = 8                                          # a random tiny model never stops by itself
    rp.txt_prompt.value = 'Hallo'; rp.btn_ask.click()
    assert 'error' not in rp.html_msg.value and '<b>you</b>' in rp.html_out.value
    ct = wb.compare_panel
    ct.int_n.value, ct.int_tokens.value = 2, 8
    ct.btn_compare.click()
    assert ct.report is not None and len(ct.report) == 2, ct.html_msg.value
    assert 'held-out data' in ct.html_info.value and 'no held-out' not in ct.html_report.value
    wb.close()

def test_runs_panel_stops_a_local_run(tmp_path, tiny):
    be = get_backend('lora', runs=tmp_path/'runs')
    job = be.launch(sample_path(), base_model=str(tiny), max_steps=400, batch_size=2, save_steps=2, eval_split=0.1)
    p = RunsPanel(be.runs, refresh=0.1, renderer='static')          # not told the backend: it makes one of the run's kind
    wait_for(lambda: p.refresh() and (p.facts[0]['step'] or 0) >= 3, 180, 'a few steps')
    p.open_run(job.id); p.btn_stop.click()
    assert p.facts[0]['status'] == 'cancelled', p.html_msg.value
    assert 'stopped' in p.html_msg.value and not p.btn_resume.disabled and p.jobs[job.id].checkpoint is not None
    p.close()
