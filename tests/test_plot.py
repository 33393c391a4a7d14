"LossPlot: live widget updates from a writer thread and a writer subprocess, throttling, downsampling, snapshots, export."
import io, json, math, os, shutil, signal, subprocess, sys, textwrap, threading, time
from pathlib import Path

import pytest

from finetune_nb.core import FtnbError, ConfigError
from finetune_nb.runs import MetricsLog, RunRegistry, RunRecord
from finetune_nb.jobs import Job
from finetune_nb.card import write_model_card
from finetune_nb.plot import LossPlot, Downsampler, svg_figure

from _child import ROOT, spawn as _spawn, wait_for_line as _wait_for_line


class CountingRenderer:
    "Records every update, so tests can see what the front end would get and when"
    name = 'counting'
    def __init__(self, plot): self.plot, self.updates, self.finished = plot, [], False
    def update(self, traces): self.updates.append((time.monotonic(), traces))
    def finish(self): self.finished = True
    def display(self): pass


def _counting(plot):
    plot.renderer = CountingRenderer(plot)
    return plot.renderer


def test_throttled_and_last_rows_always_drawn():
    log = MetricsLog()
    plot = LossPlot(log, renderer='static', min_interval=0.1)
    r = _counting(plot)
    t0 = time.monotonic(); i = 0
    while time.monotonic() - t0 < 1.0:
        log.append({'step': i, 'loss': 1 / (1 + i)}); i += 1
    elapsed = time.monotonic() - t0
    time.sleep(0.3)                       # no flush: the pending update must fire on its own
    assert 3 <= len(r.updates) <= elapsed / 0.1 + 3, len(r.updates)
    gaps = [b[0] - a[0] for a, b in zip(r.updates, r.updates[1:])]
    assert min(gaps) >= 0.09              # never faster than min_interval
    assert r.updates[-1][1][0]['x'][-1] == i - 1   # the very last row got drawn
    n = len(r.updates)
    plot.finish()
    assert r.finished and len(r.updates) == n      # nothing new to draw at the end
    log.append({'step': i, 'loss': 0.0}); time.sleep(0.2)
    assert len(r.updates) == n                     # a finished plot stops listening


def test_downsampling_bounds_every_trace_and_keeps_extremes():
    log = MetricsLog()
    plot = LossPlot(log, renderer='static', max_points=1000, smoothing=0.9)
    rows = [{'step': i, 'loss': 2 + math.sin(i / 300) - (3 if i == 54_321 else 0)} for i in range(100_000)]
    rows += [{'step': i, 'split': 'valid', 'loss': 2.5 - i / 1e5} for i in range(0, 100_000, 10)]
    log.extend(rows)
    plot.flush()
    traces = plot.traces()
    assert len(traces) == 4              # raw + smoothed, train + valid
    for t in traces:
        assert len(t['x']) <= 1003
        assert t['x'] == sorted(t['x'])
    train_raw = next(t for t in traces if t['key'] == (0, 'train', 'raw'))
    assert 54_321 in train_raw['x'] and min(train_raw['y']) == pytest.approx(-1 + math.sin(54_321 / 300) + 2 - 2, abs=3)
    assert train_raw['x'][-1] == 99_999 and train_raw['x'][0] == 0
    assert next(t for t in traces if t['key'] == (0, 'valid'))['x'][-1] == 99_990


def test_downsampler_cost_is_flat():
    ds = Downsampler(2000)
    for i in range(200_000): ds.add(i, float(i % 97))
    assert len(ds) <= 2003 and ds.width >= 128


def test_widget_updates_in_place_from_writer_thread(tmp_path):
    pytest.importorskip('anywidget')
    log = MetricsLog(tmp_path / 'metrics.jsonl')
    plot = LossPlot(log, renderer='widget', min_interval=0.05, max_points=500)
    fig = plot.figure
    assert type(fig).__name__ == 'FigureWidget'
    def writer():
        for i in range(20_000):
            log.append({'step': i, 'loss': 3 / (1 + i / 1000), 'tokens': 100 * i})
            if i % 100 == 0:
                log.append({'step': i, 'split': 'valid', 'loss': 3.2 / (1 + i / 1000), 'tokens': 100 * i})
                time.sleep(0.002)
    t = threading.Thread(target=writer); t.start()
    time.sleep(0.2)
    mid = plot.n_renders
    t.join(); plot.flush()
    assert plot.figure is fig                       # the same widget, updated in place
    assert mid >= 1 and plot.n_renders > mid        # it drew while the writer was writing
    by_name = {tr.name: tr for tr in fig.data}
    assert set(by_name) == {'train', 'valid'}
    assert by_name['train'].x[-1] == 19_999 and len(by_name['train'].x) <= 503
    # controls drive the same object a user's code would
    plot.renderer.cb_log.value = True
    assert fig.layout.yaxis.type == 'log'
    plot.renderer.dd_x.value = 'tokens'
    assert {tr.name: tr for tr in fig.data}['train'].x[-1] == 100 * 19_999
    plot.renderer.sl_smooth.value = 0.8
    assert len(fig.data) == 4 and sum(tr.opacity < 1 for tr in fig.data) == 2
    plot.finish()


def test_figure_state_stays_flat(tmp_path):
    pytest.importorskip('anywidget')
    log = MetricsLog()
    plot = LossPlot(log, renderer='widget', min_interval=10)
    def size_after(n):
        log.extend({'step': i, 'loss': 1 + 1 / (1 + i)} for i in range(len(log), n))
        plot.flush()
        return len(plot.figure.to_json())
    s10k, s100k = size_after(10_000), size_after(100_000)
    # bounded, not growing with the run: 10x the rows, at most the sawtooth of the bucket merges (+ longer numbers)
    assert s100k < 1.6 * s10k, (s10k, s100k)
    assert all(len(tr.x) <= 2003 for tr in plot.figure.data)


WRITER = '''
import sys, time
from finetune_nb.runs import MetricsLog
log = MetricsLog(sys.argv[1])
n = int(sys.argv[2])
print('ready', flush=True)
for i in range(n):
    log.append({'step': i, 'loss': 3 / (1 + i / 100)})
    if i % 50 == 0: log.append({'step': i, 'split': 'valid', 'loss': 3.3 / (1 + i / 100)})
    time.sleep(0.0005)
print('done', flush=True)
time.sleep(60)
'''


def test_writer_subprocess_streams_into_plot_and_survives_kill(tmp_path):
    data = tmp_path / 'train.jsonl'; data.write_text('{"messages": []}\n')
    run = RunRegistry(tmp_path / 'runs').create('local', 'tiny', data)
    run.update(status='running')
    plot = LossPlot(run.folder, renderer='static', min_interval=0.05)   # a path: tails the file
    r = _counting(plot)
    assert plot.sources[0].log.tailing
    proc = _spawn(WRITER, run.folder / 'metrics.jsonl', 2000)
    _wait_for_line(proc, 'done')
    os.kill(proc.pid, signal.SIGKILL); proc.wait()   # the trainer dies
    plot.finish()
    assert len(r.updates) > 2                        # streamed, not drawn once at the end
    train = next(t for t in r.updates[-1][1] if t['split'] == 'train')
    assert train['x'][-1] == 1999
    assert not plot.sources[0].log.tailing           # finish stops the tail it started
    # a restarted kernel re-plots the whole curve from the run folder
    again = LossPlot(RunRegistry(tmp_path / 'runs').get(run.id), renderer='static', tail=False)
    t2 = {t['split']: t for t in again.traces()}
    assert t2['train']['x'][-1] == 1999 and t2['valid']['x'][-1] == 1950


def test_live_widget_stays_and_its_snapshot_goes_under_it(monkeypatch):
    "At the end the live figure (and its controls) stays; the snapshot fills the output under it, small, for a reopened notebook"
    pytest.importorskip('anywidget')
    import IPython.display as D
    shown, updated = [], []
    monkeypatch.setattr(D, 'display', lambda *a, **k: shown.append((a, k)))
    monkeypatch.setattr(D, 'update_display', lambda obj, **k: updated.append((obj, k)))
    log = MetricsLog()
    plot = LossPlot(log, renderer='widget', smoothing=0.6)
    plot.show()
    r = plot.renderer
    (live, live_kw), (pending, pending_kw) = shown
    assert live_kw['display_id'] == r.display_id and live[0]['application/vnd.jupyter.widget-view+json']['model_id'] == r.box.model_id
    assert pending_kw['display_id'] == f'{r.display_id}-snapshot' and 'ftnb-pending' in pending[0]['text/html']
    assert 'ftnb-live' in r.box._dom_classes               # what the CSS of the snapshot looks for
    log.extend({'step': i, 'loss': 2 + math.sin(i) / (1 + i / 1e4)} for i in range(100_000))
    log.extend({'step': i, 'split': 'valid', 'loss': 2.1} for i in range(0, 100_000, 100))
    log.close()                                       # the end of the run finishes the plot
    assert plot.finished and len(updated) == 1
    bundle, kw = updated[0]
    assert kw['display_id'] == f'{r.display_id}-snapshot' and kw['raw']   # only the snapshot's output changes
    assert 'ftnb-snapshot' in bundle['text/html'] and '<style>' in bundle['text/html']
    stored = sum(len(v) for v in bundle.values())
    assert stored < 200_000, stored
    import base64, re
    svg = base64.b64decode(re.search(r'base64,([^"]+)"', bundle['text/html']).group(1)).decode()
    assert svg.count('<polyline') == 4                # raw + smoothed train, raw + smoothed valid
    assert r.wait(60) and r.box.children[-1] is plot.figure and r.sl_smooth in r.box.children[1].children
    assert plot.figure.data[0].x[-1] == 99_999        # the live figure, with every point, still there
    r.cb_log.value = True                             # and its controls still work
    assert plot.figure.layout.yaxis.type == 'log'


def test_the_figure_is_built_in_the_background(monkeypatch):
    "The first FigureWidget of a kernel takes seconds: the plot shows the SVG at once, then the live figure with all points"
    pytest.importorskip('anywidget')
    import finetune_nb.plot as P
    gate, real = threading.Event(), P._plotly_figure
    def slow(plot, widget=False, data=True):
        if widget: assert gate.wait(60)
        return real(plot, widget, data)
    monkeypatch.setattr(P, '_plotly_figure', slow)
    log = MetricsLog()
    log.extend({'step': i, 'loss': 3 / (1 + i)} for i in range(10))
    plot = LossPlot(log, renderer='widget', title='gpt-x · run 1', min_interval=0.01)   # returns while the figure cannot be built
    r = plot.renderer
    assert not r.ready.is_set() and r.fig is None and 'image/svg+xml' in r.html_wait.value and r.html_wait in r.box.children
    log.extend({'step': i, 'loss': 3 / (1 + i)} for i in range(10, 37))
    plot.status = 'succeeded · step 37/37 · → ft:gpt-x:tuned'
    log.close()                                        # the job ended before the figure was there
    assert plot.finished
    gate.set()
    assert r.wait(60) and r.box.children[-1] is r.fig
    assert list(r.fig.data[0].x)[-1] == 36 and len(r.fig.data[0].x) == 37     # the final points, drawn
    head = r.html_head.value                                                  # the heading above the live figure
    assert 'run 1' in head and 'step 37/37' in head and 'ft:gpt-x:tuned' in head and r.box.children[0] is r.html_head


def test_a_figure_that_cannot_be_built_leaves_the_svg_saying_why(monkeypatch):
    pytest.importorskip('anywidget')
    import finetune_nb.plot as P
    real = P._plotly_figure
    def broken(plot, widget=False, data=True):
        if widget: raise ImportError('Please install anywidget')
        return real(plot, widget, data)
    monkeypatch.setattr(P, '_plotly_figure', broken)
    plot = LossPlot(MetricsLog(), renderer='widget')
    assert not plot.renderer.wait(60) and plot.renderer.ready.is_set()
    assert 'live plot unavailable' in plot.renderer.html_wait.value and 'anywidget' in plot.renderer.html_wait.value


def test_follow_a_job_that_ended_shows_its_state_and_whole_curve(tmp_path):
    "The simulator's job finishes before follow(): `job` next shows it fresh, and the live plot gets every point and the result"
    pytest.importorskip('anywidget')
    from finetune_nb.backends import get_backend
    from finetune_nb.data import sample_path
    be = get_backend('simulator', runs=tmp_path/'runs')
    try:
        job = be.launch(sample_path(), n_epochs=1)
        assert job.status == 'validating_files'
        be.sim.speed = 10_000                                            # meanwhile, the job runs to its end
        other = be.sim.client()                                          # (seen by another client, not by `job`)
        t0 = time.monotonic()
        while other.fine_tuning.jobs.retrieve(job.provider_id).status != 'succeeded':
            assert time.monotonic() - t0 < 60, 'the simulated job never ended'
            time.sleep(0.05)
        assert job.status == 'validating_files'                          # what the job object last heard
        plot = job.follow(plot=True, renderer='widget')                  # returns at once; its follower refreshes
        from IPython.lib.pretty import pretty
        assert 'succeeded' in pretty(job)                                # `job` in the next cell: fresh, not validating_files
        t0 = time.monotonic()
        while job.following: assert time.monotonic() - t0 < 60; time.sleep(0.02)
        assert job.status == 'succeeded' and plot.finished
        assert job.id in plot.title and job.run.base_model in plot.title
        assert plot.status.startswith('succeeded · step 37/37 · loss ') and plot.status.endswith(f'→ {job.result}')
        fig = plot.figure
        assert list(fig.data[0].x) == list(range(1, 38))                   # the whole curve, though the job had ended
        head = plot.renderer.html_head.value
        assert job.id in head and job.result in head and 'step 37/37' in head
        saved = plot.save(tmp_path/'curve.html')                          # a saved figure carries the heading too
        assert job.id in saved.read_text() and job.result in saved.read_text()
    finally: be.close()


def test_console_renderer_prints_lines_and_summary():
    out = io.StringIO()
    log = MetricsLog()
    plot = LossPlot(log, renderer='console', min_interval=0.01)
    plot.renderer.file, plot.renderer.interval = out, 0.0
    log.extend({'step': i, 'loss': 1.0} for i in range(10)); plot.flush()
    log.append({'step': 10, 'split': 'valid', 'loss': 1.5})
    plot.finish()
    text = out.getvalue()
    assert 'train 1 @ 9' in text and 'valid 1.5' in text and 'step 10' in text


def test_overlay_runs_job_and_save(tmp_path):
    data = tmp_path / 'train.jsonl'; data.write_text('{"messages": []}\n')
    reg = RunRegistry(tmp_path / 'runs')
    a, b = (reg.create('local', 'tiny', data) for _ in range(2))
    for k, run in enumerate((a, b)):
        run.metrics.extend({'step': i, 'loss': (2 + k) / (1 + i), 'tokens': 10 * i} for i in range(300))
        run.update(status='succeeded')
    plot = LossPlot([a, Job(None, b)], renderer='static', x='tokens', log_y=True)
    names = [t['name'] for t in plot.traces()]
    assert names == [f'{a.id} · train', f'{b.id} · train']
    assert len({t['color'] for t in plot.traces()}) == 2
    svg = plot.save(tmp_path / 'p.svg').read_text()
    assert svg.startswith('<svg') and a.id in svg
    html = plot.save(tmp_path / 'p.html', include_plotlyjs='cdn').read_text()
    assert 'plotly' in html and len(html) < 200_000
    with pytest.raises(ConfigError, match='cannot save a plot'): plot.save(tmp_path / 'p.gif')
    with pytest.raises(ConfigError, match='smoothing'): LossPlot(a.metrics, smoothing=1.0)
    with pytest.raises(ConfigError, match='cannot plot'): LossPlot(42)


@pytest.mark.needs('kaleido')
@pytest.mark.skipif(not shutil.which('chromium') and not shutil.which('google-chrome'), reason='PNG export needs Chrome')
def test_png_export_with_kaleido(tmp_path):
    log = MetricsLog(); log.extend({'step': i, 'loss': 1 / (1 + i)} for i in range(100))
    p = LossPlot(log, renderer='static').save(tmp_path / 'p.png')
    assert p.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'


def test_png_export_without_browser_says_use_svg(tmp_path, monkeypatch):
    import plotly.graph_objects as go
    def broken(self, *a, **k): raise RuntimeError('Kaleido requires Google Chrome to be installed')
    monkeypatch.setattr(go.Figure, 'to_image', broken)
    log = MetricsLog(); log.append({'step': 0, 'loss': 1.0})
    with pytest.raises(FtnbError, match='save as .svg instead'): LossPlot(log, renderer='static').save(tmp_path / 'p.png')


def test_import_stays_light():
    code = ('import sys, finetune_nb, finetune_nb.runs, finetune_nb.plot; '
            'print(sorted(m for m in ("torch", "transformers", "peft", "trl", "plotly", "ipywidgets", "anywidget", "pandas") if m in sys.modules))')
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, cwd=ROOT, check=True).stdout
    assert out.strip() == '[]'


def test_model_card_has_everything_a_reviewer_needs(tmp_path):
    data = tmp_path / 'train.jsonl'; data.write_text('{"messages": []}\n' * 4)
    run = RunRegistry(tmp_path / 'runs').create('openai', 'gpt-4o-mini-2024-07-18', data, valid=data,
                                                spec={'n_epochs': 3, 'api_key': 'sk-abcdefghijklmnop'}, cost={'usd': 1.25})
    run.metrics.extend([{'step': i, 'loss': 2 / (1 + i)} for i in range(100)] + [{'step': 99, 'split': 'full_valid', 'loss': 0.3}])
    run.update(status='succeeded', result='ft:gpt-4o-mini:org::abc', error=None)
    text = write_model_card(run).read_text()
    for s in ('ft:gpt-4o-mini:org::abc', 'gpt-4o-mini-2024-07-18', run.data['train']['sha256'], '| n_epochs | 3 |',
              '| usd | 1.25 |', 'full_valid', '![loss curve](loss_curve.svg)'):
        assert s in text, s
    assert 'sk-abc' not in text
    svg = (run.folder / 'loss_curve.svg').read_text()
    assert svg.startswith('<svg') and len(svg) < 50_000


def test_plot_of_a_run_finishes_when_the_run_does(tmp_path):
    "A trainer in another process writes metrics, then marks the run succeeded: the plot reads the rest and finishes"
    data = tmp_path / 'train.jsonl'; data.write_text('{"messages": []}\n')
    run = RunRegistry(tmp_path / 'runs').create('local', 'tiny', data)
    plot = LossPlot(run, renderer='static', min_interval=0.05, watch_interval=0.05)
    r = _counting(plot)
    code = '''
    import sys, time
    from finetune_nb.runs import RunRecord
    run = RunRecord.load(sys.argv[1]); run.update(status='running')
    for i in range(500):
        run.metrics.append({'step': i, 'loss': 1 / (1 + i)}); time.sleep(0.001)
    run.update(status='succeeded', result='adapter')
    print('done', flush=True)
    '''
    proc = _spawn(code, run.folder)
    _wait_for_line(proc, 'done'); proc.wait()
    t0 = time.monotonic()
    while not plot.finished and time.monotonic() - t0 < 10: time.sleep(0.02)
    assert plot.finished and r.finished
    assert r.updates[-1][1][0]['x'][-1] == 499


def test_the_build_thread_starts_when_the_plot_is_complete(monkeypatch):
    "The figure's thread may use `plot.renderer`: it starts only once LossPlot has set it (run inline here, so a race would show)"
    pytest.importorskip('anywidget')
    import finetune_nb.plot as P
    class Inline(threading.Thread):
        def start(self):
            if self.name == 'ftnb-lossplot-build': self.run()   # the worst interleaving: the build runs at once
            else: super().start()
    class Threading:
        Thread = Inline
        def __getattr__(self, name): return getattr(threading, name)
    monkeypatch.setattr(P, 'threading', Threading())
    seen, real = [], P._plotly_figure
    def recording(plot, widget=False, data=True, **kw):
        if widget: seen.append(plot.renderer)              # AttributeError if the thread started too early
        return real(plot, widget, data, **kw)
    monkeypatch.setattr(P, '_plotly_figure', recording)
    log = MetricsLog(); log.extend({'step': i, 'loss': 1 / (1 + i)} for i in range(5))
    plot = LossPlot(log, renderer='widget')
    r = plot.renderer
    assert r.error is None and seen == [r] and r.wait(60) and r.box.children[-1] is r.fig
    assert list(r.fig.data[0].x) == list(range(5))


def test_notebook_looks_neutral_and_files_white(tmp_path):
    "In a notebook (light or dark theme) no white block: transparent backgrounds, grey text; saved files stay on white"
    pytest.importorskip('plotly')
    import base64, re
    rid = '20261201-171638-8fb809'
    a, b = MetricsLog(), MetricsLog()
    for log in (a, b): log.extend({'step': i, 'loss': 1 / (1 + i)} for i in range(5))
    plot = LossPlot({rid: a, f'HuggingFaceTB/SmolLM2-135M-Instruct · {rid[:-1]}0': b}, renderer='static')
    fig = plot.figure
    assert fig.layout.paper_bgcolor == fig.layout.plot_bgcolor == 'rgba(0,0,0,0)' and fig.layout.font.color == '#8a8a8a'
    svg = base64.b64decode(re.search(r'base64,([^"]+)"', plot._repr_html_()).group(1)).decode()
    assert 'fill="white"' not in svg and f'>{rid} · train<' in svg and f'· {rid[:-1]}0 · train<' in svg   # whole run ids
    html = plot.save(tmp_path / 'p.html', include_plotlyjs=False).read_text()
    assert 'rgba(0,0,0,0)' not in html and '"paper_bgcolor":"white"' in html
    assert 'fill="white"' in plot.save(tmp_path / 'p.svg').read_text()



def test_a_view_that_drew_gets_layout_and_traces_again(monkeypatch):
    "plotly 7's view says it drew under `_js2py_widget_layoutDelta`: the renderer hears it and sends the layout and every trace again"
    pytest.importorskip('anywidget')
    log = MetricsLog()
    log.extend({'step': i, 'loss': 3 / (1 + i)} for i in range(12))
    plot = LossPlot(log, renderer='widget', min_interval=0.01)
    r = plot.renderer
    assert r.wait(60)
    sent = []
    monkeypatch.setattr(r.fig, '_send_relayout_msg', lambda d, **kw: sent.append(d))
    monkeypatch.setattr(r.fig, '_send_addTraces_msg', lambda d, **kw: sent.append(('traces', d)))
    r.fig._js2py_widget_layoutDelta = {'layout_delta': {}, 'layout_edit_id': 1}   # what the browser sets once it drew
    assert sent and sent[0]['height'] == r.fig.layout.height                        # the whole layout
    assert any(isinstance(d, tuple) and len(d[1][0]['x']) == 12 for d in sent)      # every trace, every point
    n = len(sent)
    r.fig._js2py_widget_layoutDelta = {'layout_delta': {}, 'layout_edit_id': 2}   # only the first draw
    assert len(sent) == n
    log.close()
