"""Sharpness probes against exact Hessians of small models, and on a tiny Hugging Face LLaVA."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.func import functional_call

from halluc_bench.models.vlm import token_log_probs
from halluc_bench.probes import (
    PROBES,
    double_backward_attention,
    epsilon_sharpness,
    filter_parameters,
    forget_loss_fn,
    hessian_operator,
    hessian_vector_product,
    hutchinson_trace,
    hutchpp_trace,
    interpolate_checkpoints,
    lanczos_eigenvalues,
    loss_surface_1d,
    loss_surface_2d,
    normalize_direction,
    power_iteration_eigenvalues,
    random_direction,
    retain_loss_fn,
    select_parameters,
)
from halluc_bench.registry import RegistryError
from halluc_bench.unlearning.data import SpanExample, UnlearningData, forget_batch


# ----------------------------------------------------------------------------- small exact models
class Quadratic(nn.Module):
    """L(x) = sign · ½ xᵀAx + cᵀx over one parameter vector x, so H = sign · A exactly."""

    def __init__(self, matrix: torch.Tensor, sign: float = 1.0, linear: torch.Tensor | None = None):
        super().__init__()
        self.x = nn.Parameter(torch.linspace(-1.0, 1.0, matrix.shape[0], dtype=torch.float64))
        self.register_buffer("matrix", matrix)
        self.register_buffer("linear", linear if linear is not None else torch.zeros(matrix.shape[0], dtype=torch.float64))
        self.sign = sign

    def loss(self) -> torch.Tensor:
        return self.sign * 0.5 * self.x @ self.matrix @ self.x + self.linear @ self.x


def quadratic_loss(module: nn.Module) -> torch.Tensor:
    return module.loss()


def random_psd(dimension: int, rank: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    factor = torch.randn(dimension, rank, generator=generator, dtype=torch.float64)
    return factor @ factor.T


@pytest.fixture
def mlp_problem():
    """A small fp64 MLP with a cross-entropy loss and its exact Hessian over all parameters."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)).double()
    inputs = torch.randn(16, 4, dtype=torch.float64)
    targets = torch.randint(0, 3, (16,))

    def loss_fn(module: nn.Module) -> torch.Tensor:
        return nn.functional.cross_entropy(module(inputs), targets)

    names = [name for name, _ in model.named_parameters()]
    shapes = [parameter.shape for _, parameter in model.named_parameters()]
    flat = torch.cat([parameter.detach().reshape(-1) for parameter in model.parameters()])

    def flat_loss(vector: torch.Tensor) -> torch.Tensor:
        pieces, offset = {}, 0
        for name, shape in zip(names, shapes):
            pieces[name] = vector[offset : offset + shape.numel()].view(shape)
            offset += shape.numel()
        return nn.functional.cross_entropy(functional_call(model, pieces, (inputs,)), targets)

    hessian = torch.autograd.functional.hessian(flat_loss, flat)
    return model, loss_fn, hessian


def generator(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ----------------------------------------------------------------------------- Hessian-vector products
def test_hvp_matches_exact_hessian(mlp_problem):
    model, loss_fn, hessian = mlp_problem
    vector = torch.randn(hessian.shape[0], generator=generator(1), dtype=torch.float64)
    pieces, offset = [], 0
    for parameter in model.parameters():
        pieces.append(vector[offset : offset + parameter.numel()].view_as(parameter))
        offset += parameter.numel()
    product = torch.cat([piece.reshape(-1) for piece in hessian_vector_product(model, loss_fn, pieces)])
    torch.testing.assert_close(product, hessian @ vector, rtol=1e-9, atol=1e-10)


def test_hvp_operator_reuse_matches_fresh(mlp_problem):
    model, loss_fn, hessian = mlp_problem
    vector = torch.randn(hessian.shape[0], generator=generator(2), dtype=torch.float64)
    with hessian_operator(model, loss_fn, reuse_graph=True) as reused:
        first, second = reused.matvec(vector), reused.matvec(vector)
    with hessian_operator(model, loss_fn, reuse_graph=False) as fresh:
        fresh.matvec(vector)
        recomputed = fresh.matvec(vector)
    torch.testing.assert_close(first, second)
    torch.testing.assert_close(recomputed, hessian @ vector, rtol=1e-9, atol=1e-10)


# ----------------------------------------------------------------------------- traces
def test_hutchinson_matches_exact_trace(mlp_problem):
    model, loss_fn, hessian = mlp_problem
    estimate = hutchinson_trace(model, loss_fn, generator=generator(), max_probes=3000, tolerance=0.0)
    exact = float(torch.trace(hessian))
    assert estimate.n_probes == 3000
    assert abs(estimate.trace - exact) <= 4 * estimate.stderr
    assert estimate.stderr < 0.1 * abs(exact)


def test_hutchinson_diagonal_exact_one_probe():
    diagonal = torch.tensor([3.0, -1.0, 0.5, 2.0, 7.0], dtype=torch.float64)
    model = Quadratic(torch.diag(diagonal))
    estimate = hutchinson_trace(model, quadratic_loss, generator=generator(), max_probes=1, min_probes=1)
    assert estimate.n_probes == 1
    assert estimate.trace == pytest.approx(float(diagonal.sum()), abs=1e-12)
    assert math.isnan(estimate.stderr)
    assert estimate.to_dict()["stderr"] is None


def test_hutchinson_negative_trace_converges():
    matrix = random_psd(30, 30, seed=3)
    model = Quadratic(matrix, sign=-1.0)
    estimate = hutchinson_trace(model, quadratic_loss, generator=generator(), max_probes=5000, tolerance=1e-3)
    exact = -float(torch.trace(matrix))
    assert estimate.converged
    assert estimate.stop_reason == "tolerance"
    assert estimate.trace < 0
    assert abs(estimate.trace - exact) <= 5 * estimate.stderr


def test_hutchinson_mean_not_sum():
    matrix = random_psd(30, 30, seed=4)
    model = Quadratic(matrix)
    estimate = hutchinson_trace(model, quadratic_loss, generator=generator(), max_probes=400, tolerance=0.0)
    exact = float(torch.trace(matrix))
    # A sum instead of a mean would make the estimate grow 40-fold between these two points.
    assert abs(estimate.history[9] - exact) < 0.5 * exact
    assert abs(estimate.history[399] - exact) < 0.1 * exact


def test_hutchinson_stderr_shrinks_like_sqrt():
    model = Quadratic(random_psd(30, 30, seed=5))
    short = hutchinson_trace(model, quadratic_loss, generator=generator(1), max_probes=25, tolerance=0.0)
    long = hutchinson_trace(model, quadratic_loss, generator=generator(2), max_probes=400, tolerance=0.0)
    ratio = long.stderr / short.stderr  # 1/sqrt(16) = 0.25 in expectation
    assert 0.12 < ratio < 0.45


def test_hutchinson_target_stderr_stops():
    model = Quadratic(random_psd(30, 30, seed=6))
    estimate = hutchinson_trace(
        model, quadratic_loss, generator=generator(), max_probes=5000, tolerance=0.0, target_stderr=5.0
    )
    assert estimate.stop_reason == "target_stderr"
    assert estimate.stderr <= 5.0
    assert estimate.n_probes < 5000


def test_hutchpp_exact_for_low_rank():
    matrix = random_psd(20, 3, seed=7)
    model = Quadratic(matrix)
    estimate = hutchpp_trace(model, quadratic_loss, generator=generator(), sketch_size=5, max_probes=10)
    assert estimate.trace == pytest.approx(float(torch.trace(matrix)), rel=1e-6)
    assert estimate.low_rank_trace == pytest.approx(float(torch.trace(matrix)), rel=1e-6)
    assert estimate.n_hvp == 2 * 5 + estimate.n_probes


def test_hutchpp_matches_exact_trace(mlp_problem):
    model, loss_fn, hessian = mlp_problem
    estimate = hutchpp_trace(model, loss_fn, generator=generator(), sketch_size=10, max_probes=1000, tolerance=0.0)
    exact = float(torch.trace(hessian))
    assert abs(estimate.trace - exact) <= 4 * estimate.stderr
    assert estimate.sketch_size == 10


def test_trace_config_rejects_bad_values(mlp_problem):
    model, loss_fn, _ = mlp_problem
    with pytest.raises(ValueError, match="min_probes"):
        hutchinson_trace(model, loss_fn, generator=generator(), max_probes=5, min_probes=0)
    with pytest.raises(ValueError, match="sketch_size"):
        hutchpp_trace(model, loss_fn, generator=generator(), sketch_size=0)


# ----------------------------------------------------------------------------- eigenvalues
def top_by_magnitude(hessian: torch.Tensor, k: int) -> list[float]:
    values = torch.linalg.eigvalsh(hessian)
    return values[values.abs().argsort(descending=True)][:k].tolist()


def test_lanczos_matches_exact_eigenvalues(mlp_problem):
    model, loss_fn, hessian = mlp_problem
    estimate = lanczos_eigenvalues(model, loss_fn, generator=generator(), k=3, tolerance=1e-8, max_iter=60)
    assert estimate.converged
    for found, exact in zip(estimate.eigenvalues, top_by_magnitude(hessian, 3)):
        assert found == pytest.approx(exact, rel=1e-6)


def test_lanczos_algebraic_order(mlp_problem):
    model, loss_fn, hessian = mlp_problem
    estimate = lanczos_eigenvalues(
        model, loss_fn, generator=generator(), k=2, tolerance=1e-8, max_iter=60, which="algebraic"
    )
    exact = torch.linalg.eigvalsh(hessian).flip(0)[:2].tolist()
    assert estimate.eigenvalues == pytest.approx(exact, rel=1e-6)


def test_lanczos_vectors_are_eigenvectors():
    matrix = random_psd(12, 12, seed=8)
    model = Quadratic(matrix)
    estimate = lanczos_eigenvalues(model, quadratic_loss, generator=generator(), k=2, tolerance=1e-10,
                                   return_vectors=True)
    for value, vector in zip(estimate.eigenvalues, estimate.eigenvectors):
        torch.testing.assert_close(matrix @ vector.double(), value * vector.double(), rtol=1e-5, atol=1e-6)
    assert "eigenvectors" not in estimate.to_dict()


def test_power_iteration_matches_exact_eigenvalues():
    spectrum = torch.tensor([10.0, -6.0, 3.0, 1.0, 0.5, 0.1], dtype=torch.float64)
    rotation, _ = torch.linalg.qr(torch.randn(6, 6, generator=generator(9), dtype=torch.float64))
    model = Quadratic(rotation @ torch.diag(spectrum) @ rotation.T)
    estimate = power_iteration_eigenvalues(model, quadratic_loss, generator=generator(), k=2, tolerance=1e-10,
                                           max_iter=500)
    assert estimate.converged
    assert estimate.eigenvalues == pytest.approx([10.0, -6.0], rel=1e-6)


def test_power_iteration_top_on_mlp(mlp_problem):
    model, loss_fn, hessian = mlp_problem
    estimate = power_iteration_eigenvalues(model, loss_fn, generator=generator(), k=1, tolerance=1e-10, max_iter=2000)
    assert estimate.eigenvalues[0] == pytest.approx(top_by_magnitude(hessian, 1)[0], rel=1e-4)


# ----------------------------------------------------------------------------- ε-sharpness
def test_sharpness_linear_loss_exact():
    linear = torch.tensor([3.0, -4.0, 0.0], dtype=torch.float64)
    model = Quadratic(torch.zeros(3, 3, dtype=torch.float64), linear=linear)
    before = model.x.detach().clone()
    estimate = epsilon_sharpness(model, quadratic_loss, radius=0.1, steps=3)
    assert estimate.sharpness == pytest.approx(0.1 * 5.0, rel=1e-9)
    assert estimate.perturbation_norm <= 0.1 * (1 + 1e-9)
    assert torch.equal(model.x.detach(), before)


def test_sharpness_stays_in_ball(mlp_problem):
    model, loss_fn, _ = mlp_problem
    estimate = epsilon_sharpness(model, loss_fn, radius=0.05, steps=5)
    assert estimate.perturbation_norm <= 0.05 * (1 + 1e-6)
    assert estimate.sharpness > 0
    assert estimate.perturbed_loss == pytest.approx(estimate.loss + estimate.sharpness)


# ----------------------------------------------------------------------------- tiny LLaVA
@pytest.fixture
def tiny_data(tiny_vlm, tiny_images):
    pixels = tiny_vlm.pixel_values(tiny_images)

    def example(image_id: int, caption: str, hallucinated: list[str]) -> SpanExample:
        spans = tuple((caption.index(word), caption.index(word) + len(word)) for word in hallucinated)
        return SpanExample(image_id, caption, forget_spans=spans)

    forget = [
        example(0, "a red fork and a knife", ["knife"]),
        example(1, "a blue cup and a bowl", ["bowl"]),
        example(2, "a green dog and a frisbee", ["frisbee"]),
    ]
    retain = [SpanExample(3, "a cup on the left"), SpanExample(0, "a red fork on the right")]
    return UnlearningData(forget, retain, {index: pixels[index] for index in range(len(tiny_images))})


def attention_implementations(model) -> tuple[str, str, str]:
    config = model.config
    return config._attn_implementation, config.text_config._attn_implementation, config.vision_config._attn_implementation


def test_tiny_hvp_matches_exact_slice(tiny_vlm, tiny_data):
    name = "model.language_model.norm.weight"
    model = tiny_vlm.model
    loss_fn = forget_loss_fn(tiny_vlm, tiny_data, tiny_data.forget)
    parameter = dict(model.named_parameters())[name]
    batch = forget_batch(tiny_vlm, tiny_data, tiny_data.forget)

    def slice_loss(weight: torch.Tensor) -> torch.Tensor:
        logits = functional_call(model, {name: weight}, kwargs=batch.model_inputs()).logits
        log_probs, mask = token_log_probs(logits, batch.labels)
        return -log_probs.sum() / mask.sum()

    with double_backward_attention(model):
        hessian = torch.autograd.functional.hessian(slice_loss, parameter.detach().clone())
    vector = torch.randn(parameter.shape, generator=generator(3))
    (product,) = hessian_vector_product(model, loss_fn, [vector], params=[(name, parameter)])
    torch.testing.assert_close(product, hessian @ vector, rtol=1e-4, atol=1e-5)


def test_tiny_skips_frozen_and_unused(tiny_vlm, tiny_data):
    model = tiny_vlm.model
    for parameter in model.model.multi_modal_projector.parameters():
        parameter.requires_grad_(False)
    loss_fn = forget_loss_fn(tiny_vlm, tiny_data, tiny_data.forget)
    with hessian_operator(model, loss_fn) as operator:
        names = operator.names
        product = operator.matvec(torch.ones(operator.dimension))
    assert "model.vision_tower.post_layernorm.weight" not in names
    assert not any("multi_modal_projector" in name for name in names)
    assert "lm_head.weight" in names
    assert product.shape == (operator.dimension,)
    assert torch.isfinite(product).all()


def test_tiny_attention_switched_and_restored(tiny_vlm, tiny_data):
    model = tiny_vlm.model
    loss_fn = forget_loss_fn(tiny_vlm, tiny_data, tiny_data.forget)
    before = attention_implementations(model)
    with hessian_operator(model, loss_fn):
        inside = attention_implementations(model)
    assert before == ("sdpa", "sdpa", "sdpa")
    assert inside == ("eager", "eager", "eager")
    assert attention_implementations(model) == before


def test_tiny_attention_restored_on_error(tiny_vlm):
    model = tiny_vlm.model

    def failing_loss(module: nn.Module) -> torch.Tensor:
        raise RuntimeError("loss failed")

    model.train()
    with pytest.raises(RuntimeError, match="loss failed"):
        hutchinson_trace(model, failing_loss, generator=generator())
    assert attention_implementations(model) == ("sdpa", "sdpa", "sdpa")
    assert all(module.training for module in model.modules())


def test_tiny_trace_on_language_model(tiny_vlm, tiny_data):
    loss_fn = retain_loss_fn(tiny_vlm, tiny_data, tiny_data.retain)
    estimate = hutchinson_trace(tiny_vlm.model, loss_fn, "language_model", generator=generator(), max_probes=3)
    language_size = sum(parameter.numel() for _, parameter in filter_parameters(tiny_vlm.model, "language_model"))
    assert estimate.dimension == language_size
    assert math.isfinite(estimate.trace)


def test_loss_fn_chunks_match_whole(tiny_vlm, tiny_data):
    whole = forget_loss_fn(tiny_vlm, tiny_data, tiny_data.forget)
    chunked = forget_loss_fn(tiny_vlm, tiny_data, tiny_data.forget, batch_size=1)
    with torch.no_grad():
        assert float(chunked(tiny_vlm.model)) == pytest.approx(float(whole(tiny_vlm.model)), rel=1e-6)


def test_filter_parameters_named_subsets(tiny_vlm):
    language = [name for name, _ in filter_parameters(tiny_vlm.model, "language_model")]
    assert "lm_head.weight" in language
    assert all("language_model" in name or name.startswith("lm_head") for name in language)
    assert filter_parameters(tiny_vlm.model, r"norm\.weight$")
    with pytest.raises(ValueError, match="regular expression"):
        filter_parameters(tiny_vlm.model, "(")
    with pytest.raises(ValueError, match="no trainable parameter"):
        filter_parameters(tiny_vlm.model, "no_such_layer")


def test_select_parameters_drops_unused(tiny_vlm, tiny_data):
    loss_fn = forget_loss_fn(tiny_vlm, tiny_data, tiny_data.forget)
    names = [name for name, _ in select_parameters(tiny_vlm.model, loss_fn)]
    assert "model.vision_tower.post_layernorm.bias" not in names
    assert "model.vision_tower.pre_layrnorm.weight" in names


# ----------------------------------------------------------------------------- surfaces
def test_surface_1d_origin_exact(tiny_vlm, tiny_data):
    model = tiny_vlm.model
    loss_fn = forget_loss_fn(tiny_vlm, tiny_data, tiny_data.forget)
    before = {name: value.clone() for name, value in model.state_dict().items()}
    with torch.no_grad():
        reference = float(loss_fn(model.eval()))
    surface = loss_surface_1d(model, loss_fn, generator=generator(), alphas=[-0.5, 0.0, 0.5])
    assert surface.losses[1] == reference
    assert surface.base_loss == reference
    assert surface.losses[0] != reference
    assert all(torch.equal(value, before[name]) for name, value in model.state_dict().items())


def test_surface_2d_origin_exact(tiny_vlm, tiny_data):
    model = tiny_vlm.model
    loss_fn = retain_loss_fn(tiny_vlm, tiny_data, tiny_data.retain)
    with torch.no_grad():
        reference = float(loss_fn(model.eval()))
    surface = loss_surface_2d(model, loss_fn, generator=generator(), alphas=[0.0, 0.3], betas=[-0.3, 0.0])
    assert surface.losses[0][1] == reference
    assert len(surface.losses) == 2
    assert len(surface.losses[0]) == 2


def test_filter_normalization_matches_weight_filters(tiny_vlm):
    params = filter_parameters(tiny_vlm.model, "all")
    direction = random_direction(params, generator(), normalization="filter", one_dimensional="zero")
    for (name, weight), piece in zip(params, direction):
        if weight.dim() >= 2:
            weight_norms = weight.detach().reshape(weight.shape[0], -1).norm(dim=1)
            piece_norms = piece.reshape(piece.shape[0], -1).norm(dim=1)
            torch.testing.assert_close(piece_norms, weight_norms, rtol=1e-5, atol=1e-6, msg=name)
        else:
            assert torch.count_nonzero(piece) == 0, name


def test_layer_convention_for_1d(tiny_vlm):
    params = [(name, parameter) for name, parameter in filter_parameters(tiny_vlm.model, "all") if parameter.dim() == 1]
    direction = random_direction(params, generator(), one_dimensional="layer")
    for (name, weight), piece in zip(params, direction):
        assert float(piece.norm()) == pytest.approx(float(weight.detach().norm()), rel=1e-5), name


def test_normalize_direction_rejects_bad_mode():
    with pytest.raises(ValueError, match="normalization"):
        normalize_direction([torch.ones(2, 2)], [torch.ones(2, 2)], normalization="row")


def test_interpolation_endpoints_exact(tiny_vlm, tiny_data):
    import copy

    start = tiny_vlm.model.eval()
    end = copy.deepcopy(start)
    with torch.no_grad():
        for parameter in end.parameters():
            parameter.add_(0.05)
    loss_fn = forget_loss_fn(tiny_vlm, tiny_data, tiny_data.forget)
    with torch.no_grad():
        start_loss, end_loss = float(loss_fn(start)), float(loss_fn(end.eval()))
    path = interpolate_checkpoints([start, end, start], loss_fn, points_per_segment=3, names=["a", "b", "c"])
    assert path.positions == [0.0, 0.5, 1.0, 1.5, 2.0]
    assert path.checkpoint_losses == [start_loss, end_loss, start_loss]
    assert path.losses[0] == start_loss


# ----------------------------------------------------------------------------- registry
def test_probe_registry_names():
    assert {"hutchinson", "hutchpp", "lanczos", "power_iteration", "epsilon_sharpness"} <= set(PROBES.names())
    assert PROBES.get("hutchinson") is hutchinson_trace
    with pytest.raises(RegistryError, match="hutchinson"):
        PROBES.get("hutchinsn")
