"""configs/full_mix_qwen3_vl.py is full_mix with the student swapped, and `model.family` must name the preset's."""

import pytest

from configs import experiments, full_mix, full_mix_qwen3_vl
from octomed_jax.contract import ContractError, RunContract, model_config_from


def test_full_mix_qwen3_vl_differs_from_full_mix_only_in_the_student():
    config = full_mix_qwen3_vl.get_config()
    assert experiments.diff(config, full_mix.get_config()) == {
        "init_from": "checkpoints/Qwen3-VL-8B-Instruct", "model.family": "qwen3_vl", "model.preset": "qwen3_vl_8b"}
    model = model_config_from(config)
    assert (model.family, model.text.num_hidden_layers, model.text.head_dim, model.vision.patch_size) == (
        "qwen3_vl", 36, 128, 16)


def test_family_must_be_the_presets():
    config = full_mix.get_config()
    config.model.family = "qwen3_vl"
    with pytest.raises(ContractError, match=r"'7b' is a qwen2_5_vl preset but model.family is 'qwen3_vl'.*"
                                            r"qwen3_vl_8b"):
        model_config_from(config)


def test_a_qwen3_vl_run_prompts_with_qwen3_vls_template():
    """The contract of a Qwen3-VL run names Qwen3-VL-Instruct's own chat template (no default system turn), and
    an HF Qwen3-VL folder read without our contract gets it too; a contract of before, trained with Qwen2.5-VL's
    template, keeps it."""
    contract = RunContract.from_config(full_mix_qwen3_vl.get_config())
    assert contract.prompting.template == "qwen3_vl"
    assert RunContract.from_config(full_mix.get_config()).prompting.template == "qwen2_5_vl"
    assert RunContract.for_model(contract.model).prompting.template == "qwen3_vl"
    old = contract.to_dict()
    old["prompting"]["template"] = "qwen2_5_vl"
    assert RunContract.from_dict(old).prompting.template == "qwen2_5_vl"
    old["prompting"]["template"] = "qwen4"
    with pytest.raises(ContractError, match="prompting.template 'qwen4'"):
        RunContract.from_dict(old)
