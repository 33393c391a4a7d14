"The Data tab: per-example stats, filters, charts and the DataPanel driven from Python (and, opt-in, clicked in a real browser)."
import json, os, subprocess, sys, textwrap
from types import SimpleNamespace
import pytest

os.environ.setdefault('HF_HUB_OFFLINE', '1')
import pandas as pd
import ipywidgets as widgets
import finetune_nb.explore as E
from finetune_nb.explore import (example_stats, select_examples, chart_bins, bar_examples, data_charts, examples_html, DataPanel,
                                 bars_height)
from finetune_nb.core import plotly_go
from finetune_nb.validate import RULES
from finetune_nb.core import asset_path
from finetune_nb.data import sample_path, ChatDataset
from finetune_nb.validate import validate
from finetune_nb.tokens import count_tokens
from _lab import browser_marks

def _ex(u, a, sys='Sei höflich.', **kw):
    msgs = ([{'role': 'system', 'content': sys}] if sys else []) + [{'role': 'user', 'content': u}, {'role': 'assistant', 'content': a}]
    return json.dumps({'messages': msgs, **kw}, ensure_ascii=False)

@pytest.fixture
def broken(tmp_path):
    "A file with broken JSON, a missing reply, markup, an exact pair, a triple and a case-only near-duplicate"
    lines = [_ex('Hallo', 'Guten Tag!'),                                           # 1
             '{"messages": [',                                                      # 2 broken JSON
             json.dumps({'messages': [{'role': 'user', 'content': 'nichts'}]}),    # 3 no assistant, no system
             _ex('Hallo', 'Guten Tag!'),                                           # 4 = 1
             _ex('<script>alert("x")</script>', 'Nein.', sys='<b>System</b>'),     # 5 markup
             *[_ex('Wie spät?', 'Teezeit.', sys='Sei kurz.')] * 3,                  # 6-8
             _ex('HALLO', 'guten tag!'),                                           # 9 differs from 1 in case only
             *[_ex(f'Frage {k}', 'Antwort ' + 'x' * 50 * k) for k in range(1, 4)]]  # 10-12
    p = tmp_path/'broken.jsonl'
    p.write_text('\n'.join(lines) + '\n', encoding='utf-8')
    return p

# --- plain functions ---------------------------------------------------------------------------------------------

def test_stats_of_the_sample_agree_with_the_validator():
    st = example_stats(sample_path())
    rep = validate(sample_path(), model='gpt-4o-mini')
    assert len(st) == rep.n_examples == 37 and st['i'].tolist() == list(range(37))
    assert st['ntok'].tolist() == list(rep.tokens.per_example)
    assert st['n_messages'].mean() == pytest.approx(rep.stats['messages_mean'])
    assert st.loc[st['codes'].map(len) > 0, 'line'].tolist() == [f.line for f in rep.warnings]
    assert st['dup_group'].isna().all() and st.attrs['limit'] == 65_536 and st.attrs['model'] == 'gpt-4o-mini'
    # another model, another tokenizer: other counts
    st35 = example_stats(sample_path(), model='gpt-3.5-turbo')
    assert st35['ntok'].tolist() == list(count_tokens(sample_path(), 'gpt-3.5-turbo', show_progress=False).per_example)
    assert st35['ntok'].tolist() != st['ntok'].tolist() and st35.attrs['limit'] == 16_385

def test_codes_and_duplicate_groups_of_a_broken_file(broken):
    st = example_stats(broken)
    assert st['codes'][1] == ['invalid_json'] and pd.isna(st['ntok'][1]) and st['n_messages'][1] == 0
    assert pd.isna(st['ntok'][2]) and st['ntok'][3:].notna().all()   # the validator counts the valid examples only
    assert st['codes'][2] == ['missing_assistant', 'missing_system']
    assert st['codes'][3] == ['duplicate'] and st['codes'][0] == []
    # the validator's exact duplicates, grouped; the case-only copy (line 9) is no exact duplicate
    assert st['dup_group'].tolist() == [1, None, None, 1, None, 2, 2, 2, None, None, None, None]
    assert st['system'][4] == '<b>System</b>' and st['reply_chars'][9:12].tolist() == [58, 108, 158]

def test_a_given_report_is_reused_and_findings_beyond_100_are_kept(tmp_path, monkeypatch):
    p = tmp_path/'dups.jsonl'
    p.write_text('\n'.join([_ex('a', 'b')] * 150 + [_ex(str(k), 'c') for k in range(10)]) + '\n')
    st = example_stats(p)
    assert len(select_examples(st, code='duplicate')) == 149 and set(st['dup_group'][:150]) == {1}
    rep = validate(p, model='gpt-4o-mini', cap=1000)
    monkeypatch.setattr(E, 'validate', lambda *a, **k: pytest.fail('validated again'))
    assert example_stats(p, report=rep)['ntok'].tolist() == st['ntok'].tolist()

def test_select_examples_filters(broken):
    st = example_stats(broken)
    assert select_examples(st) == list(range(12))
    assert select_examples(st, code='duplicate') == [3, 6, 7]
    assert select_examples(st, dup_group=2) == [5, 6, 7] and select_examples(st, dup_group='any') == [0, 3, 5, 6, 7]
    n10, n11 = int(st['ntok'][10]), int(st['ntok'][11])
    assert select_examples(st, min_tokens=n10, max_tokens=n11) == [10, 11]   # inclusive
    assert select_examples(st, min_tokens=0) == [i for i in range(12) if i not in (1, 2)]   # rows with errors have no count
    assert select_examples(st, search='hallo', ds=broken) == [0, 3, 8]       # any case
    assert select_examples(st, search='hallo', ds=broken, code='duplicate') == [3]
    assert select_examples(st, search='hallo', ds=broken, within=[8, 9]) == [8]
    assert select_examples(st, code='pii') == []
    with pytest.raises(Exception, match='pass ds='): select_examples(st, search='x')

def test_chart_bins_and_bar_clicks(broken):
    st = example_stats(broken)
    bins = chart_bins(st)
    assert [(b[0], len(b[3])) for b in bins['messages']['bars']] == [('1', 1), ('2', 0), ('3', 10)]
    assert sorted(i for b in bins['tokens']['bars'] for i in b[3]) == [i for i in range(12) if i not in (1, 2)]
    assert [b[0] for b in bins['system']['bars']][:2] == ['Sei höflich.', 'Sei kurz.']
    assert bins['findings']['bars'][0][0] == 'duplicate'
    assert bar_examples(bins, 'findings', [0]) == ([3, 6, 7], 'finding duplicate')
    assert bar_examples(bins, 'system', [1]) == ([5, 6, 7], 'system prompt “Sei kurz.”')

def test_system_prompts_alike_in_their_label_keep_a_bar_each(tmp_path):
    p = tmp_path/'sys.jsonl'
    long = 'Du bist ein sehr hilfreicher Assistent der Bank, der immer '
    p.write_text('\n'.join([_ex('a', 'b', sys=long + 'kurz antwortet.'), _ex('c', 'd', sys=long + 'lang antwortet.')] * 6) + '\n')
    bars = chart_bins(example_stats(p))['system']['bars']
    assert len(bars) == 2 and len({b[0] for b in bars}) == 2 and [len(b[3]) for b in bars] == [6, 6]

def test_charts_limit_line_and_escaping(broken):
    st = example_stats(broken)
    figs = data_charts(st)
    assert list(figs) == ['tokens', 'messages', 'reply', 'system', 'findings']
    assert list(figs['tokens'].data[1].x) == [] and '65,536' in figs['tokens'].layout.annotations[0].text
    near = data_charts(st, limit=int(st['ntok'].max()))
    assert list(near['tokens'].data[1].x) == [st['ntok'].max()] * 2
    labels = list(figs['system'].data[0].y)
    assert '&lt;b&gt;System&lt;/b&gt;' in labels and not any('<b>' in l for l in labels)
    assert figs['findings'].data[0].marker.color[list(figs['findings'].data[0].y).index('invalid_json')] == E._ERR
    for f in figs.values(): assert f.layout.paper_bgcolor == 'rgba(0,0,0,0)' and f.layout.width is None   # as wide as its place
    assert [figs[c].layout.height for c in ('tokens', 'messages', 'reply', 'system')] == [220] * 4

def test_the_findings_chart_is_as_tall_as_its_bars(broken):
    st = example_stats(broken)
    one = st[st['codes'].map(lambda cs: cs == [] or 'duplicate' in cs)].copy()      # a single finding code
    f1, f4 = data_charts(one)['findings'], data_charts(st)['findings']
    assert (len(f1.data[0].y), len(f4.data[0].y)) == (1, 4)
    assert f1.layout.height == bars_height(1) < f4.layout.height == bars_height(4) < 220
    assert tuple(f1.layout.yaxis.range) == (0.5, -0.5)      # the one bar fills its chart: no room kept for five
    assert tuple(data_charts(st)['system'].layout.yaxis.range) == (4.5, -0.5)   # the fixed-height system chart keeps it

def test_plotly_widget_imports_without_compiling_rfc3987_grammars():
    "A fresh Python: plotly's widget is imported without rfc3987_syntax, which jsonschema still loads when it checks an IRI"
    import importlib.util
    if importlib.util.find_spec('rfc3987_syntax') is None: pytest.skip('rfc3987_syntax is not installed: nothing to spare')
    code = textwrap.dedent('''
        import sys
        from finetune_nb.core import plotly_go
        go = plotly_go(); go.FigureWidget
        assert 'jsonschema' in sys.modules and 'rfc3987_syntax' not in sys.modules, sorted(m for m in sys.modules if 'rfc' in m)
        from jsonschema import Draft7Validator, FormatChecker
        v = Draft7Validator({'format': 'iri'}, format_checker=FormatChecker())
        assert v.is_valid('https://bücher.example/straße') and not v.is_valid('not an iri')   # the check still works
        print('rfc3987_syntax' in sys.modules)
    ''')
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ['True']   # the real module, loaded by the first IRI check

def test_examples_html_shows_dpo_pairs():
    h = examples_html(asset_path('sample_prefs_de.jsonl'), [0])
    assert 'preferred' in h and 'not preferred' in h

def test_examples_html_of_broken_lines(broken):
    st = example_stats(broken)
    h = examples_html(broken, [1, 4], st)
    assert '<script>' not in h and '&lt;script&gt;' in h and '{&quot;messages&quot;: [' in h
    assert 'invalid_json' in h and f"{int(st['ntok'][4]):,} tokens" in h

# --- the panel -----------------------------------------------------------------------------------------------------

def test_panel_filters_pages_clicks_and_new_data(broken):
    p = DataPanel(broken, page_size=5)
    assert '12</b> examples' in p.html_summary.value and '✗ 2 errors' in p.html_summary.value
    assert p.html_page.value == '1–5 of 12' and p.btn_prev.disabled and not p.btn_next.disabled
    p.btn_next.click(); p.btn_next.click()
    assert p.html_page.value == '11–12 of 12' and p.btn_next.disabled and '#11' in p.html_examples.value
    p.dd_code.value = 'duplicate'
    assert (p.selected(), p.page, p.html_page.value) == ([3, 6, 7], 0, '1–3 of 3')
    p.dd_code.value = ''; p.dd_dup.value = 2; p.txt_search.value = 'SPÄT'
    assert p.selected() == [5, 6, 7]
    p.txt_search.value = 'hallo'; assert p.selected() == [] and 'No example matches' in p.html_examples.value
    p.dd_dup.value = ''; p.rs_tokens.value = (p.rs_tokens.min, int(p.stats['ntok'][0]))
    assert 0 in p.selected() and 1 not in p.selected()
    # a click on the findings chart's first bar (plotly passes the trace, the points and the device state)
    p.on_bar_click('findings', None, SimpleNamespace(point_inds=[0]), None)
    assert p.selected() == [3, 6, 7] and 'finding duplicate' in p.html_sel.value and p.box_sel.layout.display is None
    assert (p.txt_search.value, p.dd_dup.value, tuple(p.rs_tokens.value)) == ('', '', (p.rs_tokens.min, p.rs_tokens.max))
    p.txt_search.value = 'teezeit'; assert p.selected() == [6, 7]                            # a filter narrows the click
    p.on_bar_click('messages', None, SimpleNamespace(point_inds=[]))                         # no point: nothing changes
    p.btn_clear.click(); assert p.box_sel.layout.display == 'none' and p.selection is None
    p.code_buttons['invalid_json'].click(); assert p.selected() == [1] and '{&quot;messages&quot;: [' in p.html_examples.value
    p.show_examples([9, 10], 'my pick'); assert p.selected() == [9, 10] and 'my pick' in p.html_sel.value
    p.set_data(sample_path())
    assert (len(p.stats), p.selection, p.txt_path.value, list(p.code_buttons)) == (37, None, str(sample_path()), ['missing_system'])
    assert p.ds.path == sample_path() and p.html_page.value == '1–5 of 37'
    p.set_data(ChatDataset(sample_path())[:10])   # a view
    assert len(p.stats) == 10 and p.html_page.value == '1–5 of 10'

def test_panel_lays_its_charts_out_in_a_grid_and_shows_each_rule_in_full(broken):
    p = DataPanel(broken)
    assert p.grid.children == (p.box_findings, *(p.boxes[c] for c in ('findings', 'tokens', 'messages', 'reply', 'system')))
    # columns of 420 px: two fit in the 902 px JupyterLab leaves the panel beside its file browser on a 1366 px screen
    assert p.grid.layout.grid_template_columns == 'repeat(auto-fill, 420px)' and 2 * 420 + 16 < 902
    assert {p.figs[c].layout.width for c in p.figs} == {420}
    for code, btn in p.code_buttons.items():
        row = next(r for r in p.box_findings.children[1:] if r.children[0] is btn)
        assert f'>{RULES[code][1]}</div>' in row.children[1].value and 'white-space:normal' in row.children[1].value
    assert DataPanel(broken, chart_width=400).grid.layout.grid_template_columns == 'repeat(auto-fill, 400px)'

def test_panel_with_deferred_charts_shows_the_report_first(broken):
    p = DataPanel(broken, defer_charts=True)
    assert p.figs == {} and '12</b> examples' in p.html_summary.value and p.html_page.value == '1–10 of 12'
    holders = {c: b.children[0].value for c, b in p.boxes.items()}
    assert 'tokens per example …' in holders['tokens'] and f'height:{bars_height(4)}px' in holders['findings']
    p.set_data(sample_path()); assert p.figs == {} and len(p.stats) == 37   # still waiting
    p.draw_charts()
    assert sorted(p.figs) == sorted(p.boxes) and list(p.figs['findings'].data[0].y) == ['missing_system']
    p.set_data(broken)                                                       # from now on, charts follow the data
    assert len(p.figs['findings'].data[0].y) == 4

def test_panel_validates_once_per_data_set_and_model(broken, monkeypatch):
    calls = []
    real = E.validate
    monkeypatch.setattr(E, 'validate', lambda *a, **k: calls.append(k.get('model')) or real(*a, **k))
    p = DataPanel(broken)
    p.dd_code.value = 'duplicate'; p.btn_next.click(); p.txt_search.value = 'x'
    p.on_bar_click('tokens', None, SimpleNamespace(point_inds=[0]))
    p.set_data(broken)
    assert calls == ['gpt-4o-mini']
    p.cb_model.value = 'gpt-3.5-turbo'
    assert calls == ['gpt-4o-mini', 'gpt-3.5-turbo'] and 'gpt-3.5-turbo' in p.figs['tokens'].layout.title.text
    p.cb_model.value = 'gpt-4o-mini'
    assert len(calls) == 2   # back to a model seen: from the cache

def test_panel_errors_are_one_line_and_no_markup_reaches_a_widget(broken, tmp_path):
    p = DataPanel(broken)
    p.set_data(tmp_path/'missing.jsonl')
    assert 'missing.jsonl' in p.html_msg.value and p.stats is None and p.html_examples.value == ''
    p.txt_path.value = str(broken)
    assert p.html_msg.value == '' and len(p.stats) == 12
    p.show_examples([4], 'markup')
    state = json.dumps(widgets.Widget.get_manager_state())
    assert '<script>' not in state and '&lt;script&gt;' in state
    q = DataPanel()
    assert 'Choose a data file' in q.html_msg.value and q.stats is None

def test_panel_without_anywidget_draws_static_charts(broken):
    p = DataPanel(broken, live=False)
    assert all(isinstance(b.children[0], widgets.Output) for b in p.boxes.values())
    p.set_data(sample_path()); assert len(p.stats) == 37

def test_panel_updates_its_figure_widgets_in_place(broken):
    p = DataPanel(broken)
    if not p.live: pytest.skip('needs anywidget')
    fw = p.figs['messages']
    p.set_data(sample_path())
    assert p.figs['messages'] is fw and list(fw.data[0].y) == [len(b[3]) for b in p.bins['messages']['bars']]
    assert fw.layout.title.text == 'messages per example'
    note = p.figs['tokens'].layout.annotations[0].text
    assert '65,536' in note
    with pytest.warns(UserWarning, match='estimates'): p.cb_model.value = 'my-deployment'   # a model without a known limit
    assert p.figs['tokens'].layout.annotations == () and list(p.figs['tokens'].data[1].x) == []   # the last limit's note went

# --- a real browser (opt-in: FTNB_BROWSER_TESTS=1) -----------------------------------------------------------------

def _in_browser(test):
    for m in browser_marks(): test = m(test)
    return test

@_in_browser
def test_a_click_on_a_bar_in_jupyterlab_shows_its_examples(broken, tmp_path):
    from _lab import jupyter_lab, chromium, open_notebook, run_all, write_notebook
    write_notebook(tmp_path/'data.ipynb', [f"from finetune_nb.explore import DataPanel\np = DataPanel({str(broken)!r})\np"])
    u = tmp_path/'.jcfg'/'lab'/'user-settings'/'@jupyterlab'/'apputils-extension'   # no news pop-up over the screenshot
    u.mkdir(parents=True); (u/'notification.jupyterlab-settings').write_text('{"fetchNews": "false"}')
    with jupyter_lab(tmp_path) as base, chromium(1366, 1300) as pg:
        open_notebook(pg, base, 'data.ipynb'); run_all(pg)
        pg.wait_for_function("() => document.querySelectorAll('.js-plotly-plot .barlayer .point').length >= 5", timeout=90_000)
        pg.locator('.js-plotly-plot').nth(0).locator('.barlayer .point').nth(0).click(force=True)   # findings: duplicate
        pg.wait_for_selector('text=showing finding duplicate', timeout=60_000)
        pg.locator('text=show all').click()
        pg.wait_for_selector('text=showing finding duplicate', state='hidden', timeout=60_000)
        shots = os.environ.get('FTNB_SCREENSHOTS') or str(tmp_path)   # .ci/test keeps them as CI artifacts
        os.makedirs(shots, exist_ok=True)
        pg.screenshot(path=os.path.join(shots, 'data-panel.png'))
