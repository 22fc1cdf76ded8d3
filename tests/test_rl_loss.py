"""GRPO's arithmetic and its rewards: group advantages, the clipped loss under each aggregation,
over-turn masking, and reward plugins with TRL's signature."""

import math
from types import SimpleNamespace

import pytest
import torch

import perceive
from perceive.errors import ConfigError
from perceive.plugins import load_registry
from perceive.rewards import Reward
from perceive.rl.config import AdvantageNorm, Aggregation, LossConfig
from perceive.rl.loss import Denominators, TokenStats, advantages, policy_loss
from perceive.rl.rewards import builtin_rewards, pick_rewards, rollout_rewards
from perceive.trace import Hop, Trace


def test_advantages_are_centred_per_group_and_scaled_by_its_std():
    r = torch.tensor([1.0, 0.0, 0.0, 0.0, 2.0, 2.0, 2.0, 2.0])
    a = advantages(r, 4, AdvantageNorm.GROUP_STD)
    g = r[:4]
    assert a[:4] == pytest.approx(((g - g.mean()) / (g.std() + 1e-4)).tolist(), abs=1e-6)
    assert a[4:].tolist() == [0.0] * 4  # all equal: nothing to learn from this group
    assert advantages(r, 4, AdvantageNorm.NONE)[:4].tolist() == pytest.approx([0.75, -0.25, -0.25, -0.25])


def loss_of(agg, lps, olds, adv, keep=None, den=None, **cfg):
    c = LossConfig(aggregation=agg, **cfg)
    keep = keep or [True] * len(lps)
    den = den or Denominators(sum(keep), sum(x.numel() for x, k in zip(lps, keep, strict=True) if k), 8)
    return policy_loss(lps, olds, torch.tensor(adv), keep, c, den)


@pytest.mark.parametrize("agg", list(Aggregation))
def test_at_ratio_one_the_loss_is_minus_the_aggregated_advantage(agg):
    lps = [torch.zeros(2), torch.zeros(3)]
    adv = [1.0, -0.5]
    got = float(loss_of(agg, lps, [torch.zeros(2), torch.zeros(3)], adv))
    expected = {Aggregation.TOKEN_MEAN: -(2 * 1.0 + 3 * -0.5) / 5,
                Aggregation.SEQUENCE_MEAN: -(1.0 - 0.5) / 2,
                Aggregation.DR_GRPO: -(2 * 1.0 + 3 * -0.5) / (2 * 8)}[agg]
    assert got == pytest.approx(expected)


def test_the_clip_stops_the_gradient_past_one_plus_epsilon_high_for_a_positive_advantage():
    lp = torch.tensor([math.log(1.5), math.log(1.1)], requires_grad=True)
    stats = TokenStats()
    loss = policy_loss([lp], [torch.zeros(2)], torch.tensor([1.0]), [True], LossConfig(epsilon_high=0.28),
                       Denominators(1, 2, 8), stats=stats)
    loss.backward()
    assert lp.grad[0] == 0 and lp.grad[1] != 0  # 1.5 is clipped at 1.28; 1.1 is inside
    assert stats.clipped == 1 and stats.tokens == 2


def test_a_masked_trajectory_adds_nothing():
    lps = [torch.zeros(2, requires_grad=True), torch.zeros(3, requires_grad=True)]
    loss = loss_of(Aggregation.TOKEN_MEAN, lps, [torch.zeros(2), torch.zeros(3)], [1.0, 5.0], keep=[True, False])
    loss.backward()
    assert float(loss) == pytest.approx(-1.0) and lps[1].grad is None


def test_the_kl_term_is_the_k3_estimator():
    lp, ref = torch.tensor([-1.0]), torch.tensor([-1.5])
    c = LossConfig(kl_coef=0.5)
    loss = policy_loss([lp], [lp.clone()], torch.tensor([0.0]), [True], c, Denominators(1, 1, 8), ref=[ref])
    d = -0.5
    assert float(loss) == pytest.approx(0.5 * (math.exp(d) - d - 1))


def done(answer, hops=0, events=(), finish="eos"):  # a finished rollout, as the trainer reads it
    trace = Trace(hops=[Hop(i, "region_select", [], {}, "root", box={"x0": 0, "y0": 0, "x1": 10, "y1": 10})
                        for i in range(hops)], events=list(events))
    from perceive.trace import FinishReason

    return SimpleNamespace(finished=SimpleNamespace(answer=answer, trace=trace, raw=answer,
                                                    finish_reason=FinishReason(finish), token_ids=(1, 2)))


def prompt(answer, box=None):
    return SimpleNamespace(question="What number?", answer=answer, box=box)


def test_the_builtin_rewards():
    picked = [(r, 1.0) for r in builtin_rewards()]
    trajs = [done("123", hops=1), done("124"), done("123", events=[{"type": "parse_error"}]), done("123", hops=2)]
    total, parts = rollout_rewards(picked, [prompt("123", [0, 0, 10, 20])] * 4, trajs)
    assert parts["exact_match"] == [1.0, 0.0, 1.0, 1.0]
    assert parts["format"] == [0.0, 0.0, -1.0, 0.0]
    assert parts["tool_bonus"] == [1.0, 0.0, 0.0, 1.0]  # right *and* looked
    assert parts["hop_cost"] == [-1.0, 0.0, 0.0, -2.0]
    assert parts["crop_iou"] == [0.5, 0.0, 0.0, 0.5]
    assert total[0] == pytest.approx(sum(parts[k][0] for k in parts))


class LengthPlugin:
    """A TRL-style reward: (prompts, completions, **kwargs), reading the trace too."""

    @perceive.hookimpl
    def perceive_register_rewards(self):
        def short(prompts, completions, trace, **kwargs):
            return [1.0 if len(c) <= 3 and not t.hops else None for c, t in zip(completions, trace, strict=True)]
        return [Reward("short_blind", short, "short answers given without looking")]


def test_a_plugin_reward_is_picked_by_name_and_none_counts_zero():
    reg = load_registry([("length", LengthPlugin())], autoload=False)
    assert "short_blind" in reg.to_json()["rewards"][0]["name"]
    picked = pick_rewards({"short_blind": 2.0, "exact_match": 1.0}, reg)
    total, parts = rollout_rewards(picked, [prompt("12")] * 2, [done("12"), done("12345", hops=1)])
    assert parts["short_blind"] == [1.0, None] and total == [3.0, 0.0]


def test_a_malformed_or_broken_reward_is_reported_with_its_name():
    class Bad:
        @perceive.hookimpl
        def perceive_register_rewards(self):
            return [Reward("no_kwargs", lambda prompts, completions: [0.0])]
    reg = load_registry([("bad", Bad())], autoload=False)
    assert any("must accept **kwargs" in e for e in reg.plugins["bad"].errors)

    def boom(prompts, completions, **kwargs):
        raise KeyError("solution")
    with pytest.raises(ConfigError, match="reward 'boom' raised KeyError"):
        rollout_rewards([(Reward("boom", boom), 1.0)], [prompt("1")], [done("1")])


def test_over_turn_trajectories_are_the_ones_a_budget_cut():
    from perceive.rl.trainer import truncated

    assert truncated(done("", finish="max_new_tokens")) and truncated(done("", finish="context_full"))
    assert truncated(done("12", events=[{"type": "budget_exhausted", "max_hops": 1}]))
    assert not truncated(done("12", hops=2)) and not truncated(done("", finish="malformed"))


def test_the_tool_use_floor_warns_below_it_only():
    from perceive.rl.telemetry import floor_warning

    msg = floor_warning(0.02, 0.05, 20)
    assert "step 20: tool use 0.020 is below the floor 0.050" in msg and "tool_bonus" in msg
    assert floor_warning(0.05, 0.05, 20) is None and floor_warning(0.0, None, 20) is None


def test_a_cut_trajectory_is_out_of_its_groups_mean_and_spread():
    r = torch.tensor([0.0, 0.0, 1.0, 0.0])
    keep = torch.tensor([False, True, True, True])
    a = advantages(r, 4, AdvantageNorm.NONE, keep)
    assert a.tolist() == pytest.approx([0.0, -1 / 3, 2 / 3, -1 / 3])  # the mean of the three kept: 1/3
    assert advantages(r, 4, AdvantageNorm.GROUP_STD, keep)[0] == 0


def test_a_token_outside_the_top_k_set_gives_no_nan():
    lp = torch.tensor([-0.5, float("-inf")], requires_grad=True)
    loss = policy_loss([lp], [torch.tensor([-0.5, -1.0])], torch.tensor([1.0]), [True], LossConfig(kl_coef=0.1),
                       Denominators(1, 2, 8), ref=[torch.tensor([-0.7, -1.0])])
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(lp.grad).all()


def test_a_trl_style_reward_is_called_by_keyword():
    def correct(completions, answer, **kwargs):  # TRL's usual form: no prompts argument
        return [float(c == a) for c, a in zip(completions, answer, strict=True)]
    reward = Reward("correct", correct)
    from perceive.rewards import reward_problems
    assert reward_problems(reward) == []
    total, parts = rollout_rewards([(reward, 1.0)], [prompt("7")] * 2, [done("7"), done("8")])
    assert parts["correct"] == [1.0, 0.0]


def test_a_nan_reward_stops_the_run_with_its_name():
    def nan(prompts, completions, **kwargs):
        return [float("nan")] * len(completions)
    with pytest.raises(ConfigError, match="reward 'nan' returned nan: not a finite number"):
        rollout_rewards([(Reward("nan", nan), 1.0)], [prompt("1")], [done("1")])
