"""The host's known warnings are filtered by module and message only; -v (show_all) brings them back."""

from __future__ import annotations

import warnings

from nemotron3_super.host_compat import warning_filters

MESSAGE = "Transformer Engine and Apex are not installed. Falling back to Torch optimizers."


def _shown(module: str, message: str = MESSAGE) -> bool:
    with warnings.catch_warnings(record=True) as caught:
        warning_filters.install()  # catch_warnings restores the filters on exit
        warnings.warn_explicit(message, UserWarning, f"{module.replace('.', '/')}.py", 1, module=module)
    return bool(caught)


def test_known_message_from_the_host_module_is_filtered() -> None:
    warning_filters._installed.clear()
    warning_filters._log_filters.clear()
    assert not _shown("megatron.core.optimizer")


def test_same_message_elsewhere_and_other_host_messages_show() -> None:
    warning_filters._installed.clear()
    warning_filters._log_filters.clear()
    assert _shown("my_training_script")
    assert _shown("megatron.core.optimizer", "something else the host says")


def test_show_all_removes_the_filters() -> None:
    with warnings.catch_warnings(record=True) as caught:
        warning_filters._installed.clear()
        warning_filters._log_filters.clear()
        warning_filters.install()
        warning_filters.show_all()
        warnings.warn_explicit(MESSAGE, UserWarning, "megatron/core/optimizer.py", 1, module="megatron.core.optimizer")
    assert caught
