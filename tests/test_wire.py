"""The wire format and the line splitter, without processes."""

from __future__ import annotations

import ast
import json
import math
import re
from pathlib import Path

import orjson
import pytest

from tlog import protocol
from tlog.supervisor.ingest import LineSplitter, log_text

ROOT = Path(__file__).resolve().parent.parent


def test_encode_decode_roundtrip_with_nonfinite() -> None:
    line = protocol.encode("metrics", {"loss": protocol.finite(math.nan), "acc": 0.5}, step=3, epoch=None)
    assert line.startswith(b"\x1e@tlog ") and line.endswith(b"\n")
    event = protocol.decode(line[len(protocol.EMIT_PREFIX):-1])
    assert event["kind"] == "metrics" and event["step"] == 3 and "epoch" not in event
    assert math.isnan(protocol.number(event["data"]["loss"])) and protocol.number(event["data"]["acc"]) == 0.5


def test_bare_object_is_metrics_with_context_lifted() -> None:
    event = protocol.decode(b'{"step": 7, "epoch": 1, "loss": 0.25, "t": 1.7e9}')
    assert event == {"kind": "metrics", "step": 7, "epoch": 1, "t": 1.7e9, "data": {"loss": 0.25}}


@pytest.mark.parametrize("payload, why", [
    (b"{nope", "not JSON"),
    (b"[1, 2]", "JSON object"),
    (b'{"kind": "bogus", "data": {}}', "unknown event kind"),
    (b'{"kind": "metrics", "data": 5}', "'data' must be"),
    (b'{"step": "seven", "loss": 1}', "'step' must be an integer"),
    (b'{"step": 1e300, "loss": 1}', "'step' must be an integer"),
    (b'{"kind": "metrics", "epoch": 1e30, "data": {}}', "'epoch' must be an integer"),
    (b'{"rank": 18446744073709551616, "loss": 1}', "'rank' must be an integer"),
    (b'{"t": 1e20, "loss": 1}', "'t' must be a wall time"),
    (b'{"t": -5, "loss": 1}', "'t' must be a wall time"),
    (b'{"kind": "warning", "data": {"message": {"a": 1}, "category": "x"}}', "'message' must be str"),
    (b'{"kind": "warning", "data": {"category": ["x"]}}', "'category' must be str"),
    (b'{"kind": "meta", "data": {"pid": "1"}}', "'pid' must be int"),
    (b'{"kind": "meta", "data": {"argv": [1]}}', "'argv' must be a list of strings"),
    (b'{"kind": "phase", "data": {"phase": 3}}', "'phase' must be str"),
    (b'{"loss": [1, 2]}', "must be a number"),
    (b'{"kind": "attempt", "data": {"event": "exit", "status": "failed"}}', "unknown event kind"),
    (b'{"kind": "system", "data": {"rss_mb": 1}}', "unknown event kind"),
    (b'{"kind": "restart", "data": {}}', "unknown event kind"),
    (b'{"kind": ["metrics"], "data": {}}', "unknown event kind"),
    (b"[" * 100000, "not JSON"),
    (b'{"loss": "\xff"}', "not JSON"),
])
def test_malformed_payloads_raise_wire_error(payload: bytes, why: str) -> None:
    with pytest.raises(protocol.WireError, match=why):
        protocol.decode(payload)


def test_values_are_bounded_and_numbers_normalised() -> None:
    event = protocol.decode(b'{"kind": "metrics", "step": 3.0, "node": 5, "attempt": 9, "data": {"%s": 1, "big": %d, '
                            b'"yes": true, "inf": "inf"}}' % (b"k" * 5000, 1 << 70))
    assert event["step"] == 3 and "node" not in event and "attempt" not in event, "supervisor-only keys dropped"
    assert set(event["data"]) == {"k" * protocol.MAX_KEY, "big", "yes", "inf"}
    assert event["data"]["big"] == float(1 << 70) and event["data"]["yes"] == 1 and event["data"]["inf"] == "inf"
    crash = protocol.decode(b'{"kind": "crash", "data": {"traceback": "%s", "x": [1.5]}}' % (b"t" * 100000))
    assert len(crash["data"]["traceback"]) == protocol.MAX_STR and crash["data"]["x"] == [1.5]


@pytest.mark.parametrize("loads", [json.loads, orjson.loads], ids=["stdlib", "orjson"])
def test_what_decode_returns_always_encodes(monkeypatch: pytest.MonkeyPatch, loads: object) -> None:
    """Both parsers: huge ints, NaN, infinities come out refused or as values the store can write."""
    monkeypatch.setattr(protocol, "loads", loads)
    payloads = [b'{"kind": "config", "data": {"seed": %d, "deep": [[{"n": NaN}]]}}' % (1 << 64),
                b'{"kind": "crash", "data": {"x": -Infinity, "y": 1e999}}', b'{"loss": 1e999, "acc": NaN}',
                b'{"kind": "checkpoint", "data": {"path": "p", "bytes": %d}}' % (1 << 65), b'{"t": NaN, "a": 1}']
    for payload in payloads:
        try:
            event = protocol.decode(payload)
        except protocol.WireError:
            continue
        orjson.loads(orjson.dumps(event))
        json.dumps(event, allow_nan=False)


def test_splitter_separates_events_and_output() -> None:
    sp = LineSplitter()
    events, out, echo = sp.feed(b'hello\n@tlog {"loss": 1}\nworld\n')
    assert [e["data"] for e in events] == [{"loss": 1}]
    assert out == [b"hello", b"world"]
    assert echo == b"hello\nworld\n"


def test_splitter_event_after_partial_output_rejoins_the_line() -> None:
    sp = LineSplitter()
    _, out1, echo1 = sp.feed(b"epoch 1: ")
    assert echo1 == b"epoch 1: " and not out1, "a partial line is echoed at once"
    e2, out2, echo2 = sp.feed(b'\x1e@tlog {"kind":"metrics","data":{"loss":2}}\ndone\n')
    assert [e["data"]["loss"] for e in e2] == [2]
    assert out2 == [b"epoch 1: done"]
    assert echo2 == b"done\n"


def test_splitter_holds_a_possible_marker_across_chunks() -> None:
    sp = LineSplitter()
    events, _, echo = sp.feed(b"@tl")
    assert echo == b"" and not events
    events, out, echo = sp.feed(b'og {"loss": 3}\n')
    assert [e["data"] for e in events] == [{"loss": 3}] and echo == b"" and out == []


def test_splitter_event_split_across_chunks_mid_line() -> None:
    sp = LineSplitter()
    _, _, echo = sp.feed(b"abc\x1e@tlog {\"lo")
    assert echo == b"abc"
    events, out, echo = sp.feed(b'ss": 4}\n')
    assert [e["data"] for e in events] == [{"loss": 4}] and echo == b""
    _, out, _ = sp.finish()
    assert out == [b"abc"], "output before an event is never lost"


def test_splitter_hook_event_inside_a_script_event_line_is_kept() -> None:
    """The hook's event (separator to newline, one atomic write) landed inside a line the script was writing,
    itself a ``@tlog`` line or one holding a separator: the hook's event is the last one of the line."""
    sp = LineSplitter()
    good = b'\x1e@tlog {"kind":"metrics","step":3,"data":{"good":1.0}}\n'
    for script_part in (b'@tlog {"kind": "metrics", "data": {"a": "kk', b'partial \x1e@tlog {"x": [1, '):
        events, out, _ = sp.feed(script_part + good + b'kk"}}\n')
        assert [e["data"] for e in events] == [{"good": 1.0}]
        assert out[-1].endswith(b'kk"}}'), "the rest of the script's line is output"


def test_splitter_malformed_marker_line_is_output_and_counted() -> None:
    sp = LineSplitter()
    events, out, echo = sp.feed(b"\x1e@tlog {oops\n")
    assert events == [] and out == [b"@tlog {oops"] and echo == b"@tlog {oops\n"
    assert sp.malformed == 1


def test_splitter_last_line_without_newline() -> None:
    sp = LineSplitter()
    sp.feed(b"tail")
    events, out, echo = sp.finish()
    assert events == [] and out == [b"tail"] and echo == b""


def test_log_text_collapses_carriage_returns() -> None:
    assert log_text(b" 10%|#   \r 50%|#####  \r100%|##########\r") == "100%|##########"
    assert log_text(b"windows line\r") == "windows line"


def test_window_steps_columns_are_validated_and_expanded() -> None:
    good = (b'{"kind":"metrics","step":4,"data":{"loss":0.4},'
            b'"steps":{"step":[2,3],"batch":[1,null],"loss":[0.2,"nan"],"lr":[null,0.1]}}')
    event = protocol.decode(good)
    rows = protocol.step_rows(event)
    assert [(r["step"], r.get("batch"), r["data"]) for r in rows] == [
        (2, 1, {"loss": 0.2}), (3, None, {"loss": "nan", "lr": 0.1}), (4, None, {"loss": 0.4})]
    assert "steps" not in rows[-1]
    bad = [b'"steps":{"step":[1,2],"loss":[0.1]}',  # unequal lengths
           b'"steps":{"step":[1],"loss":["x"]}',  # text in a column
           b'"steps":{"step":[1.5],"loss":[1]}',  # a step that is no integer
           b'"steps":{"loss":[1]}',  # no step column
           b'"steps":{"step":[1],"loss":[[1]]}',  # nested
           b'"steps":{"step":[' + b",".join([b"1"] * (protocol.MAX_STEPS + 1)) + b']}',  # too long
           b'"steps":[1,2]']
    for tail in bad:
        with pytest.raises(protocol.WireError):
            protocol.decode(b'{"kind":"metrics","data":{},' + tail + b"}")
    splitter = LineSplitter()
    events, out, _ = splitter.feed(b'@tlog {"kind":"metrics","data":{},' + bad[0] + b"}\n")
    assert events == [] and splitter.malformed == 1 and len(out) == 1  # kept as output, counted, no raise


def test_every_tlog_environment_name_is_declared_in_protocol() -> None:
    """The contract's environment in one place: no module but protocol.py spells a TLOG_* name (the boot
    sitecustomize, which runs before tlog is importable, spells two that protocol declares)."""
    declared = {value for name, value in vars(protocol).items() if name.startswith("ENV_") and name != "ENV_PREFIX"}
    spelled: dict[str, set[str]] = {}
    for path in (ROOT / "tlog").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and \
                    re.fullmatch(r"TLOG_[A-Z0-9_]+", node.value):
                spelled.setdefault(str(path.relative_to(ROOT)), set()).add(node.value)
    boot = spelled.pop("tlog/hook/boot/sitecustomize.py")
    assert boot == {protocol.ENV_PKG_DIR, protocol.ENV_DISABLE}
    assert spelled.pop("tlog/protocol.py") == declared
    assert spelled == {}
    assert all(name.startswith(protocol.ENV_PREFIX) for name in protocol.NOTIFY_ENV.values())

