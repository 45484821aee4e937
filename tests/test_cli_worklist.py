"""``churnwatch top`` and ``churnwatch explain`` against a real Redis holding a replayed shop."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from redis_server import redis_server  # noqa: F401
from replayed_shop import ODD_ID, Shop, replayed_shop, write_config  # noqa: F401

from churnwatch.cli import main


@pytest.fixture(scope="module")
def args(replayed_shop: Shop, tmp_path_factory: pytest.TempPathFactory  # noqa: F811
         ) -> list[str]:
    config = write_config(tmp_path_factory.mktemp("cli") / "churnwatch.toml")
    return ["--config", str(config), "--redis-url", replayed_shop.url]


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_top_prints_the_worklist_most_urgent_first(args: list[str],
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "top", "--segment", "fashion", "--limit", "50", *args)
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["#", "customer", "segment", "tier", "score", "value",
                                "tier", "since", "last", "order", "next", "action"]
    rows = lines[1:-1]
    # Every at-risk or churned customer gets a playbook's action, or is held out.
    assert all(row.rstrip().endswith(")") or "no action: hold-out group of " in row
               for row in rows), rows
    assert rows and all(" fashion " in row for row in rows)
    ids = [row.split("  ")[1].strip() for row in rows]
    assert ODD_ID in ids and "plain-3" in ids
    assert ids.index(ODD_ID) < ids.index("plain-3")
    assert lines[-1].startswith(f"1-{len(rows)} of ")
    assert "savable first" in lines[-1]


def test_top_says_no_action_for_a_hold_out_customer_never_the_playbook_alone(
        args: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    # The hold-out customers (the API withholds their suggestion and names the playbook).
    code, out, _ = run(capsys, "top", "--json", "--limit", "1000", *args)
    assert code == 0
    held = {c["customer_id"]: c for c in json.loads(out)["customers"]
            if c["holdout_playbook"] is not None}
    assert held, "the replayed shop has no hold-out customer on the worklist"
    for row in held.values():
        assert row["suggestion"] is None
        assert row["next_action"] == f"no action: hold-out group of {row['holdout_playbook']}"
    code, out, _ = run(capsys, "top", "--limit", "1000", *args)
    assert code == 0
    lines = {line.split("  ")[1].strip(): line for line in out.splitlines()[1:-1]}
    for cid, row in held.items():
        assert lines[cid].rstrip().endswith(
            f"no action: hold-out group of {row['holdout_playbook']}"), lines[cid]
    assert "hold-out:" not in out
    cid = next(iter(held))
    code, out, _ = run(capsys, "explain", cid, *args)
    assert code == 0
    assert f"  next action: no action: hold-out group of {held[cid]['holdout_playbook']}" in out


def test_top_json_matches_the_api_and_filters_value_tier(
        args: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "top", "--json", "--value-tier", "high", "--tier",
                       "healthy,watch,at_risk,churned", "--limit", "5", *args)
    assert code == 0
    page = json.loads(out)
    assert 0 < len(page["customers"]) <= 5
    assert all(c["high_value"] for c in page["customers"])
    assert page["limit"] == 5 and page["offset"] == 0


@pytest.mark.parametrize(("argv", "message"), [
    (("--tier", "lost"), "--tier: unknown tier 'lost'"),
    (("--limit", "0"), "--limit: must be within 1..1000"),
    (("--segment", "garden"), "--segment: unknown segment 'garden'"),
])
def test_top_rejects_bad_arguments_with_exit_code_2(args: list[str], argv: tuple[str, ...],
                                                    message: str,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "top", *argv, *args)
    assert code == 2
    assert message in err


def test_explain_prints_score_components_reasons_and_transitions(
        args: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "explain", ODD_ID, *args)
    assert code == 0
    lines = out.splitlines()
    assert lines[0].startswith(f"{ODD_ID}: ") and "(high value)" in lines[0]
    # One scale: the score is the chance, said with its horizon.
    assert "% likely to order within " in lines[0], lines[0]
    assert "components: recency " in out
    assert "why:" in out and "no order for" in out
    assert "tier changes (newest first):" in out and " -> " in out


def test_explain_json_and_unknown_customer(args: list[str],
                                           capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "explain", "vip-2", "--json", *args)
    assert code == 0
    detail = json.loads(out)
    assert detail["customer_id"] == "vip-2" and detail["high_value"] is True
    assert detail["score_history"][-1]["health_score"] == detail["health_score"]
    assert abs(100 * detail["return_probability"] - detail["health_score"]) <= 0.06
    assert detail["horizon_days"] > 0 and detail["horizon"]
    code, out, err = run(capsys, "explain", "nobody", *args)
    assert code == 1 and out == "" and "unknown customer 'nobody'" in err


def test_top_on_an_empty_redis_says_so(replayed_shop: Shop, tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str],
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    # The monitor's Redis given by the environment, but a key prefix nothing was written under.
    config = tmp_path / "other.toml"
    config.write_text('[state]\nkey_prefix = "nothing-here"\n')
    monkeypatch.setenv("CHURNWATCH_REDIS_URL", replayed_shop.url)
    code, out, _ = run(capsys, "top", "--config", str(config))
    assert code == 0
    assert out.startswith("no customer matches")


@pytest.mark.parametrize("command", [("top",), ("explain", "vip-2"), ("export",), ("status",)])
def test_commands_on_the_monitors_state_refuse_to_run_without_its_redis(
        command: tuple[str, ...], capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    # A private Redis would be empty: "unknown customer" would be a lie.
    monkeypatch.delenv("CHURNWATCH_REDIS_URL", raising=False)
    monkeypatch.delenv("CHURNWATCH_REDIS_URL_FILE", raising=False)
    code, out, err = run(capsys, *command)
    assert code == 2 and out == ""
    assert f"{command[0]} works on the monitor's Redis: give --redis-url" in err
    assert "unknown customer" not in err
