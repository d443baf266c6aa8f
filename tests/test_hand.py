"""Tiny examples worked out by hand from the formulas of docs/rules.md.

Common layer (O = 2 outputs, I = 2 inputs):
    W = [[1, -1],        W+ = [[1, 0],    W- = [[0, -1],
         [2,  1]]              [2, 1]]          [0,  0]]
    R = [1, 3]
The expected numbers below are derived step by step in the comments; nothing is copied from
an implementation's output.
"""
import pytest
import torch

import lrp_ext
from lrp_ext import reference

W = [[1.0, -1.0], [2.0, 1.0]]
R = [1.0, 3.0]

TOL = {torch.float64: 1e-12, torch.float32: 1e-6, torch.bfloat16: 2e-2}
DTYPE_IDS = {torch.float32: "f32", torch.float64: "f64", torch.bfloat16: "bf16"}


def _t(x, dtype, device):
    return None if x is None else torch.tensor(x, dtype=dtype, device=device)


def case_epsilon():
    # a = [1, 2], b = [1, -2], epsilon = 0.5
    # z0 = 1*1 + 2*(-1) + 1 = 0   -> stab(0) = 0 + 0.5 (zero counts as positive) = 0.5
    # z1 = 1*2 + 2*1 - 2   = 2   -> stab(2) = 2.5
    # s = [1/0.5, 3/2.5] = [2, 1.2]
    # sW = [2*1 + 1.2*2, 2*(-1) + 1.2*1] = [4.4, -0.8]
    # R_in = a * sW = [1*4.4, 2*(-0.8)] = [4.4, -1.6]
    return "epsilon", ([1.0, 2.0], [1.0, -2.0]), {"epsilon": 0.5}, [4.4, -1.6]


def case_zero():
    # a = [1, 2], no bias, epsilon fixed at 1e-9
    # z0 = 1 - 2 = -1 -> -1 - 1e-9;   z1 = 2 + 2 = 4 -> 4 + 1e-9
    # s = [1/(-1 - 1e-9), 3/(4 + 1e-9)]
    # R_in = a * (sW): R_in0 = 1*(s0*1 + s1*2), R_in1 = 2*(s0*(-1) + s1*1)
    # (about [-1 + 1.5, 2*(1 + 0.75)] = [0.5, 3.5], summing to R's 4)
    s0, s1 = 1 / (-1 - 1e-9), 3 / (4 + 1e-9)
    return "zero", ([1.0, 2.0], None), {}, [1 * (s0 + 2 * s1), 2 * (-s0 + s1)]


def case_gamma():
    # a = [2, -1] -> a+ = [2, 0], a- = [0, -1];  b = [1, -4];  gamma = 0.5, stabilizer 0.5
    # W_up = W + 0.5 W+ = [[1.5, -1], [3, 1.5]];  W_dn = W + 0.5 W- = [[1, -1.5], [2, 1]]
    # b_up = b + 0.5 b+ = [1.5, -4];  b_dn = b + 0.5 b- = [1, -6]
    # z = aW^T + b: z0 = 2 + 1 + 1 = 4 > 0;  z1 = 4 - 1 - 4 = -1 < 0
    # z_p0 = a+ . W_up0 + a- . W_dn0 + b_up0 = 2*1.5 + (-1)*(-1.5) + 1.5 = 6 -> stab 6.5
    # z_n1 = a+ . W_dn1 + a- . W_up1 + b_dn1 = 2*2 + (-1)*1.5 - 6 = -3.5 -> stab -4
    # s_p = [1/6.5, 0] (z1 < 0),  s_n = [0, 3/(-4)] = [0, -0.75] (z0 > 0)
    # R_in = a+ * (s_p W_up + s_n W_dn) + a- * (s_p W_dn + s_n W_up)
    # R_in0 = 2 * (1.5/6.5 + (-0.75)*2) + 0
    # R_in1 = 0 + (-1) * ((1/6.5)*(-1.5) + (-0.75)*1.5)
    return "gamma", ([2.0, -1.0], [1.0, -4.0]), {"gamma": 0.5, "stabilizer": 0.5}, \
        [2 * (1.5 / 6.5 - 1.5), -1 * (-1.5 / 6.5 - 1.125)]


def case_alpha_beta():
    # a = [2, -1] (a+ = [2, 0], a- = [0, -1]), b = [1, -4] (b+ = [1, 0], b- = [0, -4])
    # alpha = 2, beta = 1, stabilizer 0.5
    # z_a = a+ W+^T + a- W-^T + b+:  j0: 2*1 + (-1)*(-1) + 1 = 4;  j1: 2*2 + 0 + 0 = 4
    # z_b = a+ W-^T + a- W+^T + b-:  j0: 0 + 0 + 0 = 0 (-> +0.5);  j1: 0 + (-1)*1 - 4 = -5
    # s_a = [1/4.5, 3/4.5],  s_b = [1/0.5, 3/(-5.5)] = [2, -6/11]
    # s_a W+ = [1/4.5 + 2*3/4.5, 3/4.5] = [7/4.5, 3/4.5];  s_a W- = [0, -1/4.5]
    # s_b W- = [0, -2];  s_b W+ = [2 - 12/11, -6/11]
    # R_in0 = 2*(2*7/4.5 + 0*0) - 1*(2*0 + 0*(2 - 12/11)) = 28/4.5
    # R_in1 = 2*(0*3/4.5 + (-1)*(-1/4.5)) - 1*(0*(-2) + (-1)*(-6/11)) = 2/4.5 - 6/11
    return "alpha_beta", ([2.0, -1.0], [1.0, -4.0]), \
        {"alpha": 2.0, "beta": 1.0, "stabilizer": 0.5}, [28 / 4.5, 2 / 4.5 - 6 / 11]


def case_z_plus():
    # a = [1, 2] >= 0, no bias, stabilizer 0
    # z+ = a W+^T = [1*1 + 2*0, 1*2 + 2*1] = [1, 4];  s = [1/1, 3/4]
    # R_in = a * (s W+) = [1*(1 + 0.75*2), 2*(0 + 0.75*1)] = [2.5, 1.5]   (sums to 4)
    return "z_plus", ([1.0, 2.0], None), {"stabilizer": 0.0}, [2.5, 1.5]


def case_z_plus_bias():
    # a = [2, -1], b = [1, -4] -> b+ = [1, 0]; stabilizer 0
    # z+ = a+ W+^T + a- W-^T + b+ = [2*1 + (-1)*(-1) + 1, 2*2 + 0 + 0] = [4, 4]
    # s = [1/4, 3/4];  R_in = a+ * (s W+) + a- * (s W-)
    # s W+ = [1/4 + 6/4, 3/4] = [7/4, 3/4];  s W- = [0, -1/4]
    # R_in = [2*7/4 + 0, 0 + (-1)*(-1/4)] = [3.5, 0.25]
    return "z_plus", ([2.0, -1.0], [1.0, -4.0]), {"stabilizer": 0.0}, [3.5, 0.25]


def case_flat():
    # z_j = I = 2 for every output, stabilizer 0.5 -> 2.5; bias and a ignored
    # R_in_i = sum_j R_j / 2.5 = (1 + 3) / 2.5 = 1.6 for each i
    return "flat", ([7.0, -3.0], [1.0, -4.0]), {"stabilizer": 0.5}, [1.6, 1.6]


def case_w_square():
    # W^2 = [[1, 1], [4, 1]], b^2 = [1, 16];  z = 1 (W^2)^T + b^2 = [1+1+1, 4+1+16] = [3, 21]
    # stabilizer 0: s = [1/3, 3/21] = [1/3, 1/7];  R_in = s W^2 = [1/3 + 4/7, 1/3 + 1/7]
    return "w_square", ([5.0, -9.0], [1.0, -4.0]), {"stabilizer": 0.0}, \
        [1 / 3 + 4 / 7, 1 / 3 + 1 / 7]


def case_w_square_nobias():
    # z = [1 + 1, 4 + 1] = [2, 5];  s = [1/2, 3/5];  R_in = [0.5*1 + 0.6*4, 0.5*1 + 0.6*1]
    return "w_square", ([5.0, -9.0], None), {"stabilizer": 0.0}, [2.9, 1.1]


def case_z_box():
    # a = [1, -1], low = -1, high = 2 (scalars), stabilizer 0; the bias is ignored
    # z = a W^T - low W+^T - high W-^T
    #   j0: (1 + 1) - (-1*1 + -1*0) - (2*0 + 2*(-1)) = 2 + 1 + 2 = 5
    #   j1: (2 - 1) - (-1*2 + -1*1) - 0 = 1 + 3 = 4
    # s = [1/5, 3/4]
    # sW = [0.2 + 1.5, -0.2 + 0.75] = [1.7, 0.55];  sW+ = [1.7, 0.75];  sW- = [0, -0.2]
    # R_in = a*sW - low*sW+ - high*sW- = [1.7 + 1.7 - 0, -0.55 + 0.75 + 0.4] = [3.4, 0.6]
    return "z_box", ([1.0, -1.0], [1.0, -4.0]), {"low": -1.0, "high": 2.0, "stabilizer": 0.0}, \
        [3.4, 0.6]


def case_z_box_tensor_bounds():
    # a = [1, -1], low = [-1, -2], high = [2, 1] (per feature), stabilizer 0, no bias
    #   z0 = 2 - (-1*1 + -2*0) - (2*0 + 1*(-1)) = 2 + 1 + 1 = 4
    #   z1 = 1 - (-1*2 + -2*1) - 0 = 1 + 4 = 5
    # s = [1/4, 3/5];  sW = [0.25 + 1.2, -0.25 + 0.6] = [1.45, 0.35]
    # sW+ = [1.45, 0.6];  sW- = [0, -0.25]
    # R_in = [1*1.45 + 1*1.45 - 2*0, -1*0.35 + 2*0.6 - 1*(-0.25)] = [2.9, 1.1]
    return "z_box", ([1.0, -1.0], None), \
        {"low": [-1.0, -2.0], "high": [2.0, 1.0], "stabilizer": 0.0}, [2.9, 1.1]


CASES = [case_epsilon, case_zero, case_gamma, case_alpha_beta, case_z_plus, case_z_plus_bias,
         case_flat, case_w_square, case_w_square_nobias, case_z_box, case_z_box_tensor_bounds]


def _run(impl, case, dtype, device, batched):
    rule, (a, b), params, expected = case()
    params = {k: (_t(v, dtype, device) if isinstance(v, list) else v) for k, v in params.items()}
    Rt, at = _t(R, dtype, device), _t(a, dtype, device)
    exp = torch.tensor(expected, dtype=torch.float64)
    if batched:  # the same example in rows 0 and 2 of a batch, zero relevance in row 1
        Rt = torch.stack([Rt, torch.zeros_like(Rt), Rt])
        at = torch.stack([at, 3 * at, at])
        exp = torch.stack([exp, torch.zeros_like(exp), exp])
    out = getattr(impl, rule)(Rt, at, _t(W, dtype, device), _t(b, dtype, device), **params)
    assert out.dtype == dtype and out.shape == at.shape
    torch.testing.assert_close(out.double().cpu(), exp, rtol=TOL[dtype], atol=TOL[dtype])


@pytest.mark.parametrize("batched", [False, True], ids=["1d", "batch"])
@pytest.mark.parametrize("dtype", list(TOL), ids=DTYPE_IDS.get)
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.__name__[5:])
def test_hand_public(backend, case, dtype, batched):
    _run(lrp_ext, case, dtype, backend.device, batched)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.__name__[5:])
def test_hand_reference(case):
    _run(reference, case, torch.float64, "cpu", False)


def test_hand_nn_linear(backend):
    """The epsilon example through an nn.Linear carrying W and b."""
    lin = torch.nn.Linear(2, 2).double().to(backend.device)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor(W))
        lin.bias.copy_(torch.tensor([1.0, -2.0]))
    out = lrp_ext.epsilon(_t(R, torch.float64, backend.device),
                          _t([1.0, 2.0], torch.float64, backend.device), lin, epsilon=0.5)
    torch.testing.assert_close(out.cpu(), torch.tensor([4.4, -1.6], dtype=torch.float64))
