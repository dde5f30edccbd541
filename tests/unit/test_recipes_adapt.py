"""A parallel layout the user did not set adapts to the GPUs present (recipes/adapt.py; stdlib only)."""

from __future__ import annotations

import dataclasses

import pytest

from nemotron3_super.architecture import super_120b_a12b
from nemotron3_super.recipes.adapt import adapt, set_by_user
from nemotron3_super.recipes.layout import PRETRAIN_LAYOUT, Layout, LayoutError, check_layout

MOCK = dataclasses.replace(super_120b_a12b(), hybrid_override_pattern="MEME*ME")  # the upstream mock example


def test_the_upstream_mock_example_fits_eight_gpus() -> None:
    start = dataclasses.replace(PRETRAIN_LAYOUT, gpus=8, gbs=128)
    with pytest.raises(LayoutError):  # the recipe's PP 2 / EP 32 on 8 GPUs and 7 layers
        check_layout(start, MOCK)
    adapted = adapt(start, MOCK, None, fixed=set())
    check_layout(adapted, MOCK)
    assert (adapted.pp, adapted.ep, adapted.tp, adapted.cp) == (1, 8, 1, 1)


def test_a_layout_that_fits_is_kept() -> None:
    assert adapt(PRETRAIN_LAYOUT, super_120b_a12b(), None, fixed=set()) == PRETRAIN_LAYOUT


def test_sizes_the_user_set_are_kept_even_when_nothing_then_fits() -> None:
    start = Layout(gpus=8, tp=1, pp=2, ep=32, gbs=128)
    assert adapt(start, MOCK, None, fixed={"pp"}) == start  # PP 2 never splits 7 layers: left to fail loudly
    adapted = adapt(start, MOCK, None, fixed={"ep"})
    assert adapted.ep == 32 and adapted == start  # EP 32 cannot fit 8 GPUs whatever else changes


def test_tensor_parallel_brings_sequence_parallel_along() -> None:
    start = Layout(gpus=8, tp=16, ep=8, sp=True, gbs=8)  # TP 16 > 8 GPUs
    adapted = adapt(start, super_120b_a12b(), None, fixed=set())
    check_layout(adapted, super_120b_a12b())
    assert adapted.tp == 8 and adapted.sp


def test_set_by_user_reads_override_keys() -> None:
    assert set_by_user(["model.tensor_model_parallel_size=2", "+train.x=1", "--dry-run"]) == {
        "model.tensor_model_parallel_size", "train.x"}
