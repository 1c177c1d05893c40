"""All-or-nothing steps: undo stack, fault hook."""

from __future__ import annotations

import logging

import pytest

from qiao.engine.steps import InjectedFault, Steps, fault_at


def test_run_returns_result_and_success_keeps_everything():
    done = []
    with Steps() as steps:
        assert steps.run("a", lambda: 1, lambda: done.append("undo a")) == 1
        assert steps.run("b", lambda: "two") == "two"
    assert done == []


def test_undo_in_reverse_order_and_exception_propagates():
    log = []
    with pytest.raises(KeyError), Steps() as steps:
        steps.run("a", lambda: log.append("do a"), lambda: log.append("undo a"))
        steps.run("b", lambda: log.append("do b"))  # no undo registered
        steps.run("c", lambda: log.append("do c"), lambda: log.append("undo c"))
        raise KeyError("boom")
    assert log == ["do a", "do b", "do c", "undo c", "undo a"]


def test_failing_do_registers_no_undo():
    log = []

    def fail():
        raise OSError("no")

    with pytest.raises(OSError), Steps() as steps:
        steps.run("a", lambda: log.append("do a"), lambda: log.append("undo a"))
        steps.run("b", fail, lambda: log.append("undo b"))
    assert log == ["do a", "undo a"]


def test_undo_failure_does_not_stop_other_undos(caplog):
    log = []

    def bad_undo():
        log.append("undo b (fails)")
        raise RuntimeError("undo broke")

    with caplog.at_level(logging.ERROR, logger="qiao.steps"), pytest.raises(ValueError, match="original"), Steps() as steps:
        steps.run("a", lambda: None, lambda: log.append("undo a"))
        steps.run("b", lambda: None, bad_undo)
        steps.run("c", lambda: None, lambda: log.append("undo c"))
        raise ValueError("original")
    assert log == ["undo c", "undo b (fails)", "undo a"]
    assert any("undo of step b failed" in r.getMessage() for r in caplog.records)


def test_rollback_runs_once():
    log = []
    steps = Steps()
    steps.run("a", lambda: None, lambda: log.append("undo a"))
    steps.rollback()
    steps.rollback()
    assert log == ["undo a"]


def test_fault_at_none_is_no_hook():
    assert fault_at(None) is None
    assert fault_at("") is None


def test_fault_at_hits_only_its_step():
    hook = fault_at("b")
    assert hook is not None
    hook("a")
    with pytest.raises(InjectedFault, match="injected fault at step b"):
        hook("b")


def test_fault_fails_step_before_it_runs_and_rolls_back_earlier_ones():
    log = []
    with pytest.raises(InjectedFault), Steps(fault_at("b")) as steps:
        steps.run("a", lambda: log.append("do a"), lambda: log.append("undo a"))
        steps.run("b", lambda: log.append("do b"), lambda: log.append("undo b"))
        steps.run("c", lambda: log.append("do c"), lambda: log.append("undo c"))
    assert log == ["do a", "undo a"]


def test_injected_fault_is_a_runtime_error():
    assert issubclass(InjectedFault, RuntimeError)
