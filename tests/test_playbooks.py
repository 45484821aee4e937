"""Playbooks: configuration (errors name the key and the file), matching on reason codes, the
defaults' order, and the suggestion carried on transition records in the Redis stream."""

from __future__ import annotations

import pytest
from churnwatch.state.base import shard_of
from churnwatch.state.redis_store import RedisStore
from redis_server import redis_server, redis_url  # noqa: F401

from churnwatch.core.config import ChurnwatchConfig, ConfigError, parse_config
from churnwatch.core.customer import DAY, CustomerState, Windows
from churnwatch.core.engine import ShardEngine
from churnwatch.core.events import Event
from churnwatch.core.playbooks import DEFAULT_PLAYBOOKS
from churnwatch.core.priors import PopulationPriors
from churnwatch.core.records import Incoming
from churnwatch.core.scoring import assess
from churnwatch.core.winback import reason_codes, suggest

T0 = 1_700_000_000.0


@pytest.mark.parametrize(("table", "message"), [
    ({"playbooks": {"x": {"channel": "phone"}}}, "shop.toml: playbooks.x.action: is required"),
    ({"playbooks": {"x": {"action": "a", "channel": "pigeon"}}},
     "shop.toml: playbooks.x.channel: unknown channel 'pigeon'"),
    ({"playbooks": {"x": {"action": "a", "channel": "phone", "tiers": ["lost"]}}},
     "shop.toml: playbooks.x.tiers: unknown tier 'lost'"),
    ({"playbooks": {"x": {"action": "a", "channel": "phone", "template": "Hi {name}"}}},
     "shop.toml: playbooks.x.template: unknown field {name}"),
    ({"playbooks": {"x": {"action": "a", "channel": "phone", "colour": "red"}}},
     "shop.toml: playbooks.x.colour: unknown key"),
    ({"playbooks": {"bad name": {"action": "a", "channel": "phone"}}},
     "shop.toml: playbooks.bad name: the name must be"),
    ({"winback": {"holdout_share": 0.9}}, "shop.toml: winback.holdout_share must be"),
])
def test_configuration_errors_name_the_key_and_the_file(table: dict, message: str) -> None:
    with pytest.raises(ConfigError) as error:
        parse_config(table, source="shop.toml")
    assert str(error.value).startswith(message), str(error.value)


def test_configured_playbooks_replace_the_defaults_in_priority_order() -> None:
    config = parse_config({"playbooks": {
        "later": {"action": "b", "channel": "email", "priority": 20},
        "first": {"action": "a", "channel": "phone", "priority": 5,
                  "reasons": ["service_problems"], "holdout_share": 0.2},
    }, "winback": {"window_days": 45}}, source="shop.toml")
    assert [p.name for p in config.playbooks] == ["first", "later"]
    assert config.playbooks[0].holdout_share == 0.2 and config.winback.window_days == 45
    assert ChurnwatchConfig().playbooks == DEFAULT_PLAYBOOKS


def customer(*events: Event) -> CustomerState:
    state = CustomerState(first_seen=events[0].ts)
    for event in events:
        state.apply(event, Windows.default())
    return state


def test_unanswered_whatsapp_suggests_another_channel_and_service_problems_come_first() -> None:
    config = ChurnwatchConfig(winback=ChurnwatchConfig().winback.__class__(holdout_share=0.0))
    orders = [Event("c", "order", T0 + d * DAY, amount=30.0) for d in (0, 15, 30)]
    messages = [Event("c", "message_sent", T0 + d * DAY, channel="whatsapp")
                for d in (40, 45, 50, 55)]
    state = customer(*orders, *messages)
    at = T0 + 90 * DAY
    state.tier = 2
    assessment = assess(state, at, config, PopulationPriors())
    codes = reason_codes(state, assessment, at, config)
    assert "unanswered_whatsapp" in codes and "order_overdue" in codes
    found = suggest("c", state, assessment, at, config)
    assert found is not None and found.playbook == "switch_from_whatsapp"
    assert found.channel == "email" and not found.holdout
    troubled = customer(*orders, *messages, Event("c", "support_ticket", T0 + 60 * DAY,
                                                   severity=3.0))
    troubled.tier = 2
    found = suggest("c", troubled, assess(troubled, at, config, PopulationPriors()), at, config)
    assert found is not None and found.playbook == "fix_service_first"


def test_transition_records_in_the_stream_carry_the_playbook(redis_url: str) -> None:  # noqa: F811
    config = ChurnwatchConfig(shards=2, stream_partitions=1)
    store = RedisStore(redis_url, config.shards, "pb", max_wait=5)
    try:
        ids = [f"c{n}" for n in range(40)]
        for cid in ids:
            shard = shard_of(cid, config.shards)
            engine = ShardEngine(shard, config, store.load_shard(shard))
            items = [Incoming(Event(cid, "order", T0 + d * DAY, amount=20.0), 1, n + 1)
                     for n, d in enumerate((0, 20, 40))]
            result = engine.process(items, store.load_customers(shard, [cid]),
                                    now=T0 + 400 * DAY)
            store.commit(shard, engine.state, result.changed, result.transitions)
        records = store.recent_transitions(1000)
        assert records
        raw = store.client.xrange(f"pb:{{s{shard_of(ids[0], 2)}}}:transitions")
        # Every fall into churned has a default playbook (winback_offer at the least); a move to
        # watch with nothing overdue may have none.
        assert raw and all(b"playbook" in fields for _, fields in raw
                           if fields[b"to"] == b"churned")
        assert any(b"playbook" in fields for _, fields in raw if fields[b"to"] == b"churned")
        for record in records:
            if "playbook" not in record:
                assert record["to"] != "churned"
                continue
            assert record["playbook"] in {p.name for p in DEFAULT_PLAYBOOKS}
            assert isinstance(record["holdout"], bool)
            if record["holdout"]:
                assert "action" not in record
            else:
                assert record["action"] and record["channel"]
    finally:
        store.close()
