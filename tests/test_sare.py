"""The targeted-SAM optimizer and step, and the SARE unlearner."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from halluc_bench.unlearning import LoraSettings, NonFiniteLossError, make_unlearner
from halluc_bench.unlearning.sharpness import select_perturbed
from sare.sam import TargetedSAM, preserved_running_stats, targeted_sam_step
from sare.unlearner import SARE, SAREConfig
from unlearning_support import with_nan_loss, same_weights, taught_setup, weights


@pytest.fixture(autouse=True)
def one_thread():
    """Two intra-op threads on a shared 2-core machine make these tiny steps up to 100x slower."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _net(seed: int = 0, batch_norm: bool = False) -> nn.Sequential:
    generator = torch.Generator().manual_seed(seed)
    layers = [nn.Linear(4, 8), nn.BatchNorm1d(8) if batch_norm else nn.Identity(), nn.Tanh(), nn.Linear(8, 1)]
    net = nn.Sequential(*layers)
    with torch.no_grad():
        for parameter in net.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.5 + 0.1)
    return net


def _inputs(seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(16, 4, generator=generator), torch.randn(16, 4, generator=generator)


def _forget_loss(net, x):
    return net(x).pow(2).mean()


def _retain_loss(net, x):
    return (net(x) - 1).pow(2).mean()


def _sam(net: nn.Sequential, rho: float = 0.05, adaptive: bool = False, perturb_last: bool = True) -> TargetedSAM:
    first, last = list(net[0].parameters()), list(net[3].parameters())
    groups = [{"params": last}, {"params": first, "perturb": False}] if perturb_last else [{"params": first + last}]
    return TargetedSAM(groups, torch.optim.SGD, rho=rho, adaptive=adaptive, lr=0.1)


def _global_norm(tensors) -> float:
    return math.sqrt(sum(float(t.pow(2).sum()) for t in tensors))


# ----------------------------------------------------------------- the perturbation
def test_epsilon_norm_equals_rho():
    net = _net()
    sam = _sam(net, rho=0.07, perturb_last=False)
    x, _ = _inputs()
    _forget_loss(net, x).backward()
    sam.perturb()
    epsilons = [sam.state[p]["epsilon"] for p in net.parameters()]
    assert _global_norm(epsilons) == pytest.approx(0.07, rel=1e-6)
    sam.restore()


def test_epsilon_limited_to_perturbed_group():
    net = _net()
    sam = _sam(net, perturb_last=True)
    before = weights(net)
    x, _ = _inputs()
    _forget_loss(net, x).backward()
    sam.perturb()
    during = weights(net)
    assert torch.equal(during["0.weight"], before["0.weight"])
    assert not torch.equal(during["3.weight"], before["3.weight"])
    assert _global_norm([sam.state[p]["epsilon"] for p in net[3].parameters()]) == pytest.approx(0.05, rel=1e-6)
    sam.restore()


def test_adaptive_epsilon_scaled_by_weights():
    net = _net()
    sam = _sam(net, rho=0.05, adaptive=True, perturb_last=False)
    x, _ = _inputs()
    _forget_loss(net, x).backward()
    sam.perturb()
    scaled = [sam.state[p]["epsilon"] / p.detach().sub(sam.state[p]["epsilon"]).abs() for p in net.parameters()]
    assert _global_norm(scaled) == pytest.approx(0.05, rel=1e-4)
    sam.restore()


def test_restore_is_exact():
    net = _net()
    sam = _sam(net, perturb_last=False)
    before = weights(net)
    x, _ = _inputs()
    _forget_loss(net, x).backward()
    sam.perturb()
    assert not same_weights(weights(net), before)
    sam.restore()
    assert same_weights(weights(net), before)


def test_zero_gradient_gives_no_nan():
    net = _net()
    sam = _sam(net, perturb_last=False)
    before = weights(net)
    x, _ = _inputs()
    (0.0 * _forget_loss(net, x)).backward()
    assert sam.perturb() == 0.0
    assert same_weights(weights(net), before)
    sam.restore()
    sam.step()
    assert all(torch.isfinite(p).all() for p in net.parameters())


def test_step_refuses_while_perturbed():
    net = _net()
    sam = _sam(net)
    _forget_loss(net, _inputs()[0]).backward()
    sam.perturb()
    with pytest.raises(RuntimeError, match="restore"):
        sam.step()


def test_rho_validated():
    with pytest.raises(ValueError, match="rho"):
        TargetedSAM(_net().parameters(), rho=-0.1)


# ----------------------------------------------------------------- the targeted step
def test_targeted_step_gradient_matches_definition():
    """.grad = grad L_h(theta + eps) + grad L_keep(theta), eps = rho * grad L_h(theta) / ||.||."""
    net = _net()
    expected_net = copy.deepcopy(net)
    x_forget, x_retain = _inputs()
    rho = 0.05

    params = list(expected_net.parameters())
    g = torch.autograd.grad(_forget_loss(expected_net, x_forget), params)
    norm = _global_norm(g)
    with torch.no_grad():
        for p, grad in zip(params, g):
            p.add_(rho * grad / norm)
    g_perturbed = torch.autograd.grad(_forget_loss(expected_net, x_forget), params)
    with torch.no_grad():
        for p, grad in zip(params, g):
            p.sub_(rho * grad / norm)
    g_retain = torch.autograd.grad(_retain_loss(expected_net, x_retain), params)
    expected = [a + b for a, b in zip(g_perturbed, g_retain)]

    sam = _sam(net, rho=rho, perturb_last=False)
    before = weights(net)
    seen_at_retain = {}

    def retain_closure():
        seen_at_retain.update(weights(net))
        return _retain_loss(net, x_retain)

    losses = targeted_sam_step(sam, lambda: _forget_loss(net, x_forget), retain_closure)
    assert same_weights(seen_at_retain, before)  # retain gradient at the unperturbed weights
    assert same_weights(weights(net), before)  # restored before the update
    for parameter, grad in zip(net.parameters(), expected):
        assert torch.allclose(parameter.grad, grad, atol=1e-6)
    assert losses.forget_unperturbed is not None
    assert float(losses.forget_perturbed) > float(losses.forget_unperturbed)  # eps is an ascent direction


def test_targeted_step_reuses_epsilon():
    net = _net()
    sam = _sam(net, perturb_last=False)
    x_forget, x_retain = _inputs()
    targeted_sam_step(sam, lambda: _forget_loss(net, x_forget), lambda: _retain_loss(net, x_retain))
    first = [sam.state[p]["epsilon"].clone() for p in net.parameters()]
    sam.step()
    losses = targeted_sam_step(sam, lambda: _forget_loss(net, x_forget), None, refresh=False)
    assert losses.forget_unperturbed is None
    assert losses.retain is None
    assert all(torch.equal(a, sam.state[p]["epsilon"]) for a, p in zip(first, net.parameters()))


def test_targeted_step_restores_when_closure_raises():
    net = _net()
    sam = _sam(net, perturb_last=False)
    before = weights(net)
    x_forget, _ = _inputs()
    calls = []

    def forget_closure():
        calls.append(1)
        if len(calls) == 2:
            raise NonFiniteLossError("forget loss is nan")
        return _forget_loss(net, x_forget)

    with pytest.raises(NonFiniteLossError):
        targeted_sam_step(sam, forget_closure, None)
    assert same_weights(weights(net), before)
    assert not sam.is_perturbed


def test_grad_scaler_epsilon_from_unscaled_gradients():
    x_forget, x_retain = _inputs()
    plain_net, scaled_net = _net(), _net()
    plain = _sam(plain_net, perturb_last=False)
    targeted_sam_step(plain, lambda: _forget_loss(plain_net, x_forget), lambda: _retain_loss(plain_net, x_retain))

    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
    scaled = _sam(scaled_net, perturb_last=False)
    targeted_sam_step(
        scaled,
        lambda: _forget_loss(scaled_net, x_forget),
        lambda: _retain_loss(scaled_net, x_retain),
        backward=lambda loss: scaler.scale(loss).backward(),
        grad_scale=scaler.get_scale(),
    )
    assert scaled.last_grad_norm == pytest.approx(plain.last_grad_norm, rel=1e-5)
    for p_plain, p_scaled in zip(plain_net.parameters(), scaled_net.parameters()):
        assert torch.allclose(plain.state[p_plain]["epsilon"], scaled.state[p_scaled]["epsilon"], atol=1e-7)
    scaler.unscale_(scaled)
    for p_plain, p_scaled in zip(plain_net.parameters(), scaled_net.parameters()):
        assert torch.allclose(p_plain.grad, p_scaled.grad, atol=1e-5)
    scaler.step(scaled)
    scaler.update()
    plain.step()
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(plain_net.parameters(), scaled_net.parameters()))


def test_running_stats_updated_once_at_unperturbed_weights():
    net = _net(batch_norm=True)
    expected = copy.deepcopy(net)
    x_forget, _ = _inputs()
    expected.train()
    with torch.no_grad():
        expected(x_forget)  # one update of the running statistics at theta
    net.train()
    sam = _sam(net, perturb_last=False)
    targeted_sam_step(sam, lambda: _forget_loss(net, x_forget), None, module=net)
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        assert torch.equal(getattr(net[1], name), getattr(expected[1], name)), name


def test_preserved_running_stats_restores_buffers():
    net = _net(batch_norm=True)
    net.train()
    before = net[1].running_mean.clone()
    with preserved_running_stats(net):
        net(_inputs()[0])
        assert not torch.equal(net[1].running_mean, before)
    assert torch.equal(net[1].running_mean, before)


# ----------------------------------------------------------------- the optimizer contract
def test_state_dict_round_trip():
    x_forget, x_retain = _inputs()
    net = _net()
    sam = TargetedSAM(net.parameters(), torch.optim.AdamW, rho=0.05, lr=1e-2)
    targeted_sam_step(sam, lambda: _forget_loss(net, x_forget), lambda: _retain_loss(net, x_retain))
    sam.step()
    state = copy.deepcopy(sam.state_dict())  # as if saved to disk: a loaded live state dict would share tensors
    assert "base_optimizer" in state

    twin_net = copy.deepcopy(net)
    twin = TargetedSAM(twin_net.parameters(), torch.optim.AdamW, rho=0.05, lr=1e-2)
    twin.load_state_dict(state)
    assert twin.base_optimizer.state[next(twin_net.parameters())]["exp_avg"] is not None
    assert twin.has_epsilon
    for optimizer, model in ((sam, net), (twin, twin_net)):
        targeted_sam_step(optimizer, lambda m=model: _forget_loss(m, x_forget), None, refresh=False)
        optimizer.step()
    assert same_weights(weights(net), weights(twin_net))


def test_param_groups_shared_with_base():
    net = _net()
    sam = TargetedSAM(net.parameters(), torch.optim.SGD, lr=0.1)
    sam.param_groups[0]["lr"] = 0.01
    assert sam.base_optimizer.param_groups[0]["lr"] == 0.01
    assert sam.param_groups[0]["rho"] == 0.05


def test_step_with_closure_runs_plain_sam():
    net = _net()
    sam = TargetedSAM(net.parameters(), torch.optim.SGD, rho=0.05, lr=0.1)
    x_forget, _ = _inputs()
    before = weights(net)

    def closure():
        sam.zero_grad()
        loss = _forget_loss(net, x_forget)
        loss.backward()
        return loss

    loss = sam.step(closure)
    assert loss is not None
    assert not same_weights(weights(net), before)
    assert not sam.is_perturbed


# ----------------------------------------------------------------- the SARE unlearner
def test_sare_config_defaults():
    config = SAREConfig()
    assert config.rho == 0.05
    assert config.perturb == "language_model"
    assert config.forget_objective == "npo"
    assert config.refresh_every == 1


@pytest.mark.parametrize(("field", "value"), [("rho", -0.01), ("refresh_every", 0), ("perturb", "vision"), ("forget_objective", "dpo")])
def test_sare_config_rejects(field, value):
    with pytest.raises(ValueError) as caught:
        SAREConfig(**{field: value})
    assert field in str(caught.value)


def test_sare_perturb_selection(tiny_vlm):
    named = list(tiny_vlm.model.named_parameters())
    language = select_perturbed(named, "language_model")
    assert "lm_head.weight" in language
    assert not any("multi_modal_projector" in name or "vision_tower" in name for name in language)
    layer = select_perturbed(named, (0,))
    assert layer and all("language_model.layers.0." in name for name in layer)
    assert select_perturbed(named, ("lm_head.*",)) == {"lm_head.weight"}
    with pytest.raises(ValueError, match="set lora"):
        select_perturbed(named, "lora")


def test_sare_refresh_every_four_steps(tiny_vlm, tiny_images):
    vlm, data = taught_setup(tiny_vlm, tiny_images)
    result = make_unlearner("sare", steps=6, batch_size=2, refresh_every=4).unlearn(vlm, data, progress=False)
    refreshed = [row.step for row in result.log if "forget_loss_unperturbed" in row.extras]
    assert refreshed == [0, 4]
    assert isinstance(make_unlearner("sare"), SARE)


def test_sare_ga_objective_needs_no_reference():
    assert make_unlearner("sare", forget_objective="ga").needs_reference is False
    assert make_unlearner("sare", forget_objective="ga", kl_weight=0.5).needs_reference is True


def test_sare_lora_perturbs_adapters(tiny_vlm, tiny_images):
    vlm, data = taught_setup(tiny_vlm, tiny_images)
    lora = LoraSettings(rank=2, alpha=4.0)
    result = make_unlearner("sare", steps=2, batch_size=2, lora=lora, perturb="lora", kl_weight=0.1).unlearn(
        vlm, data, progress=False
    )
    assert not any("lora" in name for name in weights(result.vlm.model))
    assert all(math.isfinite(row.total_loss) for row in result.log)
    assert result.log[0].extras["perturbation_grad_norm"] > 0


def test_sare_nonfinite_keeps_unperturbed_weights(tiny_vlm, tiny_images):
    vlm, data = taught_setup(tiny_vlm, tiny_images)
    # Loss calls per SARE step: forget at theta, forget at theta + eps, retain; call 4 is step 1's perturbed pass.
    unlearner = with_nan_loss(make_unlearner("sare", steps=3, batch_size=2), bad_call=4)
    with pytest.raises(NonFiniteLossError, match="at step 1") as caught:
        unlearner.unlearn(vlm, data, progress=False)
    reference = make_unlearner("sare", steps=1, batch_size=2).unlearn(vlm, data, progress=False)
    assert same_weights(weights(caught.value.result.vlm.model), weights(reference.vlm.model))
