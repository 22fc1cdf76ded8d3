"""Per-element bounds on how far a float32 result may lie from a reference implementation's.

A parity test compares tensors that two implementations computed from (nearly) the same inputs.
Where a result comes out of products of large numbers, a flat tolerance is the wrong model: the
VPT projector's second round multiplies unscaled dot products ``a_j = <F_j, c>`` (|a| up to ~40)
by ``c``, so one element may rightly differ by 2e-4 where its neighbour may not differ by 1e-6.
Here the bound is computed per output element, from the magnitudes that enter it, in two parts.

**What the inputs carry, propagated to first order.** A :class:`Bounded` tensor is a value
computed here and a per-element bound on its distance from the reference's. Where the reference
recorded the same tensor, that distance is measured, and propagated worst case: ``y = sum_i w_i
x_i`` moves by at most ``sum_i |w_i| e_i``. The bound then holds whatever the signs of the
measured errors; nothing makes them independent (one encoder difference can move a whole row
one way), and on these fixtures the largest second-round difference reaches 0.6 of this worst
case. Where the reference did not record the tensor, its error is a rate from a documented
cross-implementation measurement times the largest magnitude in its row (a network errs at the
scale of the row it computed), and the errors of its elements are taken as independent (each is
a different sum, rounded in a different order): they propagate in quadrature,
``sqrt(sum_i w_i^2 e_i^2)``. Worst case there would add the 4096 errors that enter one output of
the SAM projector's 4x4x256 convolution as if all had one sign: a bound 100 times the measured
difference.

**The rounding of each operation here.** A dot product ``sum_i a_i b_i`` of length n is off by at
most ``gamma_n sum_i |a_i b_i|``, ``gamma_n = n u / (1 - n u)``, ``u = 2**-24``: every product and
every partial sum ``s_k`` rounded the same way. Roundings are independent and of random sign,
which gives the ``sqrt(n) u sum_i |a_i b_i|`` rule of thumb, but that one still takes every
partial sum as large as ``sum_i |a_i b_i|``. Used here is the standard deviation the random-sign
model gives for the partial sums as they are, ``u sqrt(sum_i (a_i b_i)^2 + sum_k s_k^2)`` (in
index order; a blocked or pairwise order has smaller partial sums), times
:data:`ROUNDING_SAFETY`. On these fixtures the rule of thumb is 10 times that standard deviation
for the conditioning's 64-long dot products and 35 times for the convolution's 4096-long ones:
bounds that loose would let a real mistake of that size through.

See Higham, *Accuracy and Stability of Numerical Algorithms*, ch. 3 (inner products, and the
sqrt(n) rule of thumb). Everything here is computed in float64, so the bound carries no float32
rounding of its own.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

#: float32 unit roundoff
U = 2.0**-24
#: times the random-sign standard deviation: sqrt(2) because the reference rounded too, in its own
#: order; about 4 standard deviations for the largest of ~30,000 elements; 6 in all
ROUNDING_SAFETY = 6.0


@dataclass(frozen=True)
class Bounded:
    """``value``: a tensor as computed here (float64 copy); ``err``: per element (same shape,
    float64), a bound on ``|value - reference|``; ``independent``: the errors of different
    elements are independent (propagated in quadrature) rather than measured (worst case)."""

    value: torch.Tensor
    err: torch.Tensor
    independent: bool = False

    @staticmethod
    def measured(value: torch.Tensor, reference: torch.Tensor) -> Bounded:
        """An input the reference recorded: its error is what it is, element by element."""
        value, reference = value.detach().double(), reference.detach().double()
        return Bounded(value, (value - reference).abs())

    @staticmethod
    def relative(value: torch.Tensor, rate: float, dim: int = -1) -> Bounded:
        """An input the reference did not record: ``rate`` times the largest magnitude in its row
        (along ``dim``); an element near zero is as much a sum of large terms as its neighbours."""
        value = value.detach().double()
        return Bounded(value, (rate * value.abs().amax(dim, keepdim=True)).expand_as(value).clone(), True)

    def map(self, fn) -> Bounded:
        """The same layout change (permute, reshape, unfold) on the value and the bound."""
        return Bounded(fn(self.value), fn(self.err), self.independent)


def dot_rounding(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """The rounding estimate of the dot products of ``x`` (..., n) with each row of ``w`` (k, n),
    per result (..., k). A long sum's partial sums are taken at every b-th term (b = n / 256 at
    most) and counted b times: the estimate is a sum over 4096 steps, and a random walk moves
    little within 16 of them."""
    n, k = x.shape[-1], w.shape[0]
    b = n // 256 if n > 256 and n % 256 == 0 else 1
    blocks = torch.einsum("...jr,kjr->...kj", x.reshape(*x.shape[:-1], n // b, b), w.reshape(k, n // b, b))
    partial = blocks.cumsum(-1)
    return ROUNDING_SAFETY * U * (x.pow(2) @ w.pow(2).T + b * partial.pow(2).sum(-1)).sqrt()


def sum_rounding(x: torch.Tensor) -> torch.Tensor:
    """The rounding estimate of ``x.sum(-1)``, per result."""
    return dot_rounding(x, torch.ones(1, x.shape[-1], dtype=x.dtype))[..., 0]


def linear(x: Bounded, weight: torch.Tensor, bias: torch.Tensor | None = None) -> Bounded:
    """``y = x W^T + b`` over the last dimension (``weight`` (out, in)): the error of ``x``
    through ``W``, the rounding of the dot products, and of adding the bias."""
    w = weight.detach().double()
    b = None if bias is None else bias.detach().double()
    y = torch.nn.functional.linear(x.value, w, b)
    moved = (x.err.pow(2) @ w.pow(2).T).sqrt() if x.independent else x.err @ w.abs().T
    rounding = dot_rounding(x.value, w)
    if b is not None:
        rounding = rounding + ROUNDING_SAFETY * U * y.abs()
    return Bounded(y, moved + rounding)  # the outputs share their inputs: no longer independent


def layer_norm(x: Bounded, ln: torch.nn.LayerNorm) -> Bounded:
    """``y = g (x - mean) / sd + beta`` over the last dimension. With ``xh = (x - mean) / sd``, a
    change ``dx`` moves ``xh_i`` by ``(dx_i - mean(dx)) / sd - xh_i mean(xh dx) / sd``: bounded
    term by term (the mean terms in quadrature for independent errors). Rounding: the mean and
    variance are sums of n terms, then a few operations per element."""
    v, e = x.value, x.err
    n = v.shape[-1]
    mean = v.mean(-1, keepdim=True)
    sd = (v.var(-1, unbiased=False, keepdim=True) + ln.eps).sqrt()
    xh = (v - mean) / sd
    if x.independent:
        shift = e.pow(2).sum(-1, keepdim=True).sqrt() / n
        spread = (xh * e).pow(2).sum(-1, keepdim=True).sqrt() / n
    else:
        shift, spread = e.mean(-1, keepdim=True), (xh.abs() * e).mean(-1, keepdim=True)
    moved = (e + shift + xh.abs() * spread) / sd
    mean_rounding = sum_rounding(v).unsqueeze(-1) / n
    sd_rounding = sum_rounding((v - mean).pow(2)).unsqueeze(-1) / (2 * n * sd)
    rounding = (mean_rounding + xh.abs() * sd_rounding) / sd
    g = ln.weight.detach().double()
    y = xh * g + ln.bias.detach().double()
    return Bounded(y, g.abs() * (moved + rounding) + ROUNDING_SAFETY * U * (y.abs() + g.abs() * xh.abs()),
                   x.independent)


def condition(features: Bounded, cond: Bounded) -> Bounded:
    """The VPT conditioning ``O_j = F_j + a_j c`` with ``a_j = <F_j, c>`` (no scaling), for
    ``features`` (N, T, d) and ``cond`` (N, d): the errors of F and c through the dot product
    and the product with ``c`` (worst case), the rounding of the dot product, of the product and
    of the sum."""
    f, ef = features.value, features.err
    c, ec = cond.value.unsqueeze(1), cond.err.unsqueeze(1)  # (N, 1, d)
    a = (f * c).sum(-1, keepdim=True)  # (N, T, 1)
    ea = (ef * c.abs() + f.abs() * ec).sum(-1, keepdim=True) + sum_rounding(f * c).unsqueeze(-1)
    out = f + a * c
    err = ef + ea * c.abs() + a.abs() * ec + ROUNDING_SAFETY * U * ((a * c).abs() + out.abs())
    return Bounded(out, err)


@dataclass(frozen=True)
class Margin:
    """How a result sits in its bound: ``worst``, the largest ``|actual - expected| / bound``
    (over 1: outside), at index ``where``; ``share_over_tenth``, the share of the elements that a
    bound ten times smaller would not hold."""

    worst: float
    where: tuple[int, ...]
    share_over_tenth: float
    elements: int

    def __str__(self) -> str:
        return (f"worst |diff|/bound {self.worst:.3g} at {self.where}, "
                f"{self.share_over_tenth:.2%} of {self.elements} elements over a tenth of the bound")


def margin(actual: torch.Tensor, expected: torch.Tensor, bound: torch.Tensor) -> Margin:
    ratio = (actual.detach().double() - expected.double()).abs() / bound.reshape(actual.shape)
    where = tuple(int(i) for i in torch.unravel_index(ratio.argmax(), ratio.shape))
    return Margin(float(ratio.max()), where, float((ratio > 0.1).double().mean()), ratio.numel())


def assert_within(actual: torch.Tensor, expected: torch.Tensor, bound: torch.Tensor, what: str) -> Margin:
    """``actual`` lies within ``bound`` of ``expected`` at every element; returns the margin."""
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    m = margin(actual, expected, bound)
    assert m.worst <= 1, f"{what}: outside its float32 error bound: {m}"
    return m
