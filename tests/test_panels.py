"CostPanel driven from Python: set `.value`, read what the panel shows."
import json, os
import pytest

os.environ.setdefault('HF_HUB_OFFLINE', '1')
import finetune_nb.panels as P
from finetune_nb.panels import CostPanel
from finetune_nb.core import asset_path
from finetune_nb.cost import estimate_training_cost, compare_prompting

SAMPLE = asset_path('sample_support_de.jsonl')

def test_cost_panel_updates_as_inputs_change():
    p = CostPanel(SAMPLE, model='gpt-4o-mini')
    ref = estimate_training_cost(SAMPLE, 'gpt-4o-mini')
    assert (p.estimate.usd, p.estimate.n_epochs, p.estimate.billing_tokens) == (ref.usd, 3, ref.billing_tokens)
    assert f'{ref.billing_tokens:,}' in p.html_cost.value and '2027-01-06' in p.html_cost.value
    p.dd_epochs.value = 4
    assert p.estimate.n_epochs == 4 and p.estimate.usd == pytest.approx(ref.usd * 4 / 3)
    p.cb_model.value = 'gpt-4.1-nano'
    assert p.estimate.usd == pytest.approx(ref.tokens_per_epoch * 4 * 1.5 / 1e6)
    assert p.box_lora.layout.display == 'none'   # no LoRA section for an OpenAI model

def test_cost_panel_counts_once_per_file_and_model(monkeypatch):
    calls = []
    real = P.count_tokens
    monkeypatch.setattr(P, 'count_tokens', lambda *a, **k: calls.append(a) or real(*a, **k))
    p = CostPanel(SAMPLE, model='gpt-4o-mini')
    for v in (1000, 20_000, 500_000): p.sl_volume.value = v
    p.dd_epochs.value = 2
    assert len(calls) == 1
    p.cb_model.value = 'gpt-3.5-turbo'
    assert len(calls) == 2

def test_prompt_vs_finetune_sliders_and_chart():
    p = CostPanel(SAMPLE, model='gpt-4o-mini')
    p.sl_volume.value, p.sl_prompt.value, p.sl_ft_prompt.value, p.sl_output.value, p.sl_months.value = 200_000, 3000, 100, 150, 6
    ref = compare_prompting(200_000, 3000, 100, 150, 'gpt-4o-mini', training_usd=p.estimate.usd, months=6)
    assert p.comparison.monthly_prompting == pytest.approx(ref.monthly_prompting)
    assert p.comparison.payback_months == pytest.approx(ref.payback_months)
    assert f'{ref.monthly_prompting:,.2f}' in p.html_compare.value
    if p.fig is not None:   # a live FigureWidget, updated in place
        assert list(p.fig.data[0].x) == list(range(7))
        assert list(p.fig.data[1].y) == pytest.approx(ref.cumulative()['finetuned'])
    p.dd_prompt_model.value = 'gpt-4o-2024-08-06'
    assert p.comparison.prompt_model == 'gpt-4o-2024-08-06'
    # the advice follows: 37 examples are too few to beat a good prompt
    assert p.advice.recommendation == 'prompt first' and 'prompt first' in p.html_advice.value

def test_dataset_input_and_errors(tmp_path):
    from finetune_nb.data import ChatDataset
    ds = ChatDataset(SAMPLE)
    p = CostPanel(ds[:20], model='gpt-4o-mini')
    assert p.estimate.n_examples == 20 and p.estimate.n_epochs == 5
    p.txt_path.value = str(tmp_path/'missing.jsonl')
    assert p.estimate is None and 'missing.jsonl' in p.html_error.value
    p.txt_path.value = str(SAMPLE)
    assert p.estimate.n_examples == 37 and p.html_error.value == ''
    p.cb_model.value = 'gpt-9-turbo'
    assert 'no price' in p.html_error.value

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
