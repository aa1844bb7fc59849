"""fastbp's Numba kernels: layers, activations, losses, optimizer updates.

Dimension letters: N = batch rows, I = input features, O = output features.

Every kernel writes into caller-given arrays, allocates nothing per element, validates
nothing (the objects in ``fastbp`` do) and returns at most a scalar loss. Each row-wise op
has three levels: a serial body over a range (``_*_rows`` / ``_*_cols`` / ``_*_range``),
a serial kernel (``bias_activation_forward``, ...) and a parallel one (``*_par``) that
runs the body over fixed-size chunks. Chunks are a fixed number of rows, never "one per
thread", so every reduction adds in the same order on one thread or many: results are
bitwise reproducible and the serial and parallel variants agree exactly.

No serial kernel can reach a parallel one: ``fastbp.kernels`` picks the variant by size
in Python, so a run on small arrays never compiles a ``parallel=True`` kernel (their
compilation is the slowest part of Numba's pipeline) and never starts the thread pool.
The compiled plan is serial throughout; for large models it runs one step per call and
the optimizer update goes parallel from Python.

All kernels and the helpers they call live in this one module: Numba's ``cache=True``
keys a cached function by its own source file only, so a helper edited in another file
would leave a stale cache behind.
"""
import math

import numpy as np
from numba import njit, prange, types
from numba.extending import intrinsic

from .config import COLS_PER_BLOCK, PARALLEL, ROWS_PER_CHUNK, SERIAL, SMALL_GEMM_FLOPS

# Activation codes (fastbp.layers maps classes to these).
IDENTITY, RELU, SIGMOID, TANH, SOFTMAX = 0, 1, 2, 3, 4
# Loss codes; the *_FUSED codes are the output-layer pairs whose gradient w.r.t. the
# pre-activation is p - y: Softmax + CategoricalCrossentropy, Sigmoid + BinaryCrossentropy.
MSE, CCE, BCE, SOFTMAX_CCE, SIGMOID_BCE = 0, 1, 2, 3, 4
# Optimizer codes; hyper-parameters travel in a float64 array `hp` (see optim_update).
SGD, MOMENTUM, RMSPROP, ADAM = 0, 1, 2, 3
# Nesterov momentum, and Adam with its bias correction folded into the step size (the Adam
# paper's section 2 form, scikit-learn's AdamOptimizer): see optim_update.
NESTEROV, ADAM_LR = 4, 5
# Half squared error: value 0.5 * mean over outputs of e**2 per sample, gradient e (see
# loss_forward_backward).
HALF_SE = 5


# ---------------------------------------------------------------- scalar helpers
# exp and tanh written out so that LLVM vectorizes the loops that call them: Numba's
# np.exp / np.tanh call libm's scalar functions, 3-6x slower on long rows. Accuracy is
# that of libm (about 2 ulp here, tests/test_kernels.py checks 4 ulp). They work in
# float64; float32 values are widened, computed and rounded back.

@intrinsic
def _bits_as_float64(typingctx, bits):
    """Reinterpret the 64 bits of an int64 as a float64 (an LLVM bitcast)."""
    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], context.get_value_type(types.float64))
    return types.float64(types.int64), codegen


@intrinsic
def _float64_bits(typingctx, value):
    """The 64 bits of a float64 as an int64 (an LLVM bitcast)."""
    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], context.get_value_type(types.int64))
    return types.int64(types.float64), codegen


_LOG2E = 1.4426950408889634
# 1.5 * 2**52: v + _SHIFTER rounds v to an integer held in the low bits of the result, so
# k comes out as a float and, by subtracting the bit patterns, as an int64 without a
# float-to-int conversion (AVX2 has no packed one: LLVM would do it lane by lane).
_SHIFTER = 6755399441055744.0
_LN2_HI = 6.93147180369123816490e-01   # ln 2 split in two: k * _LN2_HI is exact
_LN2_LO = 1.90821492927058770002e-10
_INV_FACT = tuple(1.0 / math.factorial(n) for n in range(14))


@njit(inline="always", **SERIAL)
def _expm1_poly(r):
    """e**r - 1 for |r| <= ln(2)/2, by its Taylor series to r**13 (error < 1e-17)."""
    c = _INV_FACT
    r2 = r * r
    r4 = r2 * r2
    r8 = r4 * r4
    # Estrin's scheme: independent pairs, then powers of r, so the chain of dependent
    # operations is 4 deep instead of 13 (scalar code waits on it).
    p01 = 1.0 + r * c[2]
    p23 = c[3] + r * c[4]
    p45 = c[5] + r * c[6]
    p67 = c[7] + r * c[8]
    p89 = c[9] + r * c[10]
    pab = c[11] + r * c[12]
    q0 = p01 + r2 * p23
    q1 = p45 + r2 * p67
    q2 = p89 + r2 * pab
    return r * ((q0 + r4 * q1) + r8 * (q2 + r4 * c[13]))


@njit(inline="always", **SERIAL)
def _exp(x):
    """e**x: x = k ln2 + r with |r| <= ln(2)/2, e**r by polynomial, times 2**k (built
    from its bits, in two factors so subnormal results come out right)."""
    xc = min(max(x, -746.0), 709.8)
    kd = xc * _LOG2E + _SHIFTER          # k = round(x / ln 2), in kd's low bits
    k = kd - _SHIFTER
    ki = _float64_bits(kd) - _float64_bits(_SHIFTER)
    r = (xc - k * _LN2_HI) - k * _LN2_LO
    k1 = ki >> 1
    y = (1.0 + _expm1_poly(r)) * _bits_as_float64((k1 + 1023) << 52) \
        * _bits_as_float64((ki - k1 + 1023) << 52)
    y = np.inf if x > 709.782712893384 else y
    y = 0.0 if x < -745.1332191019412 else y
    return x if x != x else y


@njit(inline="always", **SERIAL)
def _tanh(x):
    """tanh(x) = (1 - e) / (1 + e) with e = exp(-2|x|); below |x| = 0.17, where 1 - e
    would cancel, -m / (2 + m) with m = expm1(-2|x|) from the series instead."""
    a = abs(x)
    m = _expm1_poly(-2.0 * min(a, 0.17))
    e = _exp(-2.0 * a)
    t = -m / (2.0 + m) if a < 0.17 else (1.0 - e) / (1.0 + e)
    return x if x != x else math.copysign(t, x)


@njit(inline="always", **SERIAL)
def _sigmoid(z):
    # exp(-|z|) never overflows; the two forms are 1 / (1 + e) and e / (1 + e).
    e = _exp(-abs(z))
    return 1.0 / (1.0 + e) if z >= 0 else e / (1.0 + e)


def _chunks(n, per):
    return (n + per - 1) // per


_chunks = njit(**SERIAL)(_chunks)


@njit(**SERIAL)
def _derivative_span(dz, dout, out, i, j0, j1, act):
    """dz[i, j0:j1] = dL/dz from dout = dL/d(output) and the cached output, for an
    elementwise act. The branch sits outside the loop so each loop vectorizes."""
    if act == RELU:
        for j in range(j0, j1):
            dz[i, j] = dout[i, j] if out[i, j] > 0 else 0.0 * dout[i, j]
    elif act == SIGMOID:
        for j in range(j0, j1):
            dz[i, j] = dout[i, j] * (out[i, j] * (1.0 - out[i, j]))
    elif act == TANH:
        for j in range(j0, j1):
            dz[i, j] = dout[i, j] * (1.0 - out[i, j] * out[i, j])
    else:
        for j in range(j0, j1):
            dz[i, j] = dout[i, j]


# ---------------------------------------------------------------- matrix products
# Large products go to BLAS (np.dot, through SciPy's BLAS); below SMALL_GEMM_FLOPS
# multiply-adds a plain loop is faster than a BLAS call's fixed cost. Transposes are
# layouts (a.T of a C array is an F array that BLAS reads as is), never copies.

@njit(**SERIAL)
def matmul(out, a, b):
    """out = a @ b. a: (N, I), b: (I, O), out: (N, O)."""
    n, k_dim = a.shape
    m = b.shape[1]
    if n * k_dim * m > SMALL_GEMM_FLOPS:
        np.dot(a, b, out)
        return
    for i in range(n):
        for j in range(m):
            s = 0.0
            for k in range(k_dim):
                s += a[i, k] * b[k, j]
            out[i, j] = s


@njit(**SERIAL)
def matmul_tn(out, a, b):
    """out = a.T @ b. a: (N, I), b: (N, O), out: (I, O)."""
    n, k_dim = a.shape
    m = b.shape[1]
    if n * k_dim * m > SMALL_GEMM_FLOPS:
        np.dot(a.T, b, out)
        return
    for i in range(k_dim):
        for j in range(m):
            s = 0.0
            for r in range(n):
                s += a[r, i] * b[r, j]
            out[i, j] = s


@njit(**SERIAL)
def matmul_nt(out, a, b):
    """out = a @ b.T. a: (N, O), b: (I, O), out: (N, I)."""
    n, m = a.shape
    k_dim = b.shape[0]
    if n * k_dim * m > SMALL_GEMM_FLOPS:
        np.dot(a, b.T, out)
        return
    for r in range(n):
        for i in range(k_dim):
            s = 0.0
            for j in range(m):
                s += a[r, j] * b[i, j]
            out[r, i] = s


# ---------------------------------------------------------------- activation forward

@njit(**SERIAL)
def _forward_rows(out, z, b, act, lo, hi):
    """out[i] = act(z[i] + b) for rows lo..hi; b may be empty (no bias); out may be z."""
    n_out = out.shape[1]
    has_bias = b.shape[0] > 0
    for i in range(lo, hi):
        if has_bias:
            for j in range(n_out):
                out[i, j] = z[i, j] + b[j]
        else:
            for j in range(n_out):
                out[i, j] = z[i, j]
        if act == RELU:
            for j in range(n_out):
                if out[i, j] < 0:
                    out[i, j] = 0.0
        elif act == SIGMOID:
            for j in range(n_out):
                out[i, j] = _sigmoid(out[i, j])
        elif act == TANH:
            for j in range(n_out):
                out[i, j] = _tanh(out[i, j])
        elif act == SOFTMAX:
            # Each row subtracts its own max, so far-apart rows never become 0/0.
            m = out[i, 0]
            for j in range(1, n_out):
                if out[i, j] > m:
                    m = out[i, j]
            s = 0.0
            for j in range(n_out):
                out[i, j] = _exp(out[i, j] - m)
            for j in range(n_out):
                s += out[i, j]
            for j in range(n_out):
                out[i, j] = out[i, j] / s


@njit(**PARALLEL)
def bias_activation_forward_par(out, z, b, act):
    """bias_activation_forward over chunks of rows in parallel (same bits)."""
    n = out.shape[0]
    for c in prange(_chunks(n, ROWS_PER_CHUNK)):
        _forward_rows(out, z, b, act, c * ROWS_PER_CHUNK, min(n, (c + 1) * ROWS_PER_CHUNK))


@njit(**SERIAL)
def bias_activation_forward(out, z, b, act):
    """out = act(z + b), row-wise; ``b`` of length 0 means no bias. ``out`` may be ``z``.

    out, z: (N, O); b: (O,) or (0,).
    """
    _forward_rows(out, z, b, act, 0, out.shape[0])


@njit(**SERIAL)
def linear_forward(out, x, w, b, act):
    """out = act(x @ w + b): one BLAS GEMM, then bias and activation in one sweep.

    out: (N, O); x: (N, I); w: (I, O); b: (O,).
    """
    matmul(out, x, w)
    _forward_rows(out, out, b, act, 0, out.shape[0])


# ---------------------------------------------------------------- activation backward

@njit(**SERIAL)
def _backward_rows(dz, dout, out, act, lo, hi):
    """dz[i] = dL/dz for rows lo..hi given dL/dout and the cached output; dz may be dout."""
    n_out = out.shape[1]
    for i in range(lo, hi):
        if act == SOFTMAX:
            # Closed form of the softmax Jacobian-vector product: p * (g - <g, p>).
            s = 0.0
            for j in range(n_out):
                s += dout[i, j] * out[i, j]
            for j in range(n_out):
                dz[i, j] = out[i, j] * (dout[i, j] - s)
        else:
            _derivative_span(dz, dout, out, i, 0, n_out, act)


@njit(**PARALLEL)
def activation_backward_par(dz, dout, out, act):
    """activation_backward over chunks of rows in parallel (same bits)."""
    n = out.shape[0]
    for c in prange(_chunks(n, ROWS_PER_CHUNK)):
        _backward_rows(dz, dout, out, act, c * ROWS_PER_CHUNK, min(n, (c + 1) * ROWS_PER_CHUNK))


@njit(**SERIAL)
def activation_backward(dz, dout, out, act):
    """dz = dL/dz from dout = dL/d(act(z)) and out = act(z); O(N*O) for every act.

    dz, dout, out: (N, O). ``dz`` may be ``dout``.
    """
    _backward_rows(dz, dout, out, act, 0, out.shape[0])


@njit(**SERIAL)
def _backward_cols(dz, db, dout, out, act, j0, j1):
    """For columns j0..j1: dz = derivative applied to dout, and db = column sums of dz.

    One sweep; rows are added in order, so every variant gives the same db bit for bit.
    Not for SOFTMAX (it needs whole rows).
    """
    for j in range(j0, j1):
        db[j] = 0.0
    for i in range(dz.shape[0]):
        _derivative_span(dz, dout, out, i, j0, j1, act)
        for j in range(j0, j1):
            db[j] += dz[i, j]


@njit(**PARALLEL)
def _backward_cols_par(dz, db, dout, out, act):
    # Parallel over blocks of output features: no two threads ever write the same db[j].
    # Measured slower than the serial sweep at every size (python -m fastbp.breakeven),
    # so no kernel calls it; kept for that measurement.
    n_out = dz.shape[1]
    for c in prange(_chunks(n_out, COLS_PER_BLOCK)):
        _backward_cols(dz, db, dout, out, act, c * COLS_PER_BLOCK,
                       min(n_out, (c + 1) * COLS_PER_BLOCK))


@njit(**SERIAL)
def activation_backward_bias(dz, db, dout, out, act):
    """dz = derivative of ``act`` applied to dout, and db = dz.sum(0), in one sweep.

    dz, dout, out: (N, O); db: (O,). ``dz`` may be ``dout``.
    """
    # Column sums stay serial: parallel over blocks of columns never won
    # (python -m fastbp.breakeven, kernels/config.py).
    if act == SOFTMAX:
        _backward_rows(dz, dout, out, act, 0, out.shape[0])
        act = IDENTITY
        dout = dz
    _backward_cols(dz, db, dout, out, act, 0, dz.shape[1])


@njit(**SERIAL)
def _colsum_cols(db, a, j0, j1):
    for j in range(j0, j1):
        db[j] = 0.0
    for i in range(a.shape[0]):
        for j in range(j0, j1):
            db[j] += a[i, j]


@njit(**PARALLEL)
def _colsum_par(db, a):
    # As _backward_cols_par: measured slower than the serial sum, kept for breakeven.
    n_out = a.shape[1]
    for c in prange(_chunks(n_out, COLS_PER_BLOCK)):
        _colsum_cols(db, a, c * COLS_PER_BLOCK, min(n_out, (c + 1) * COLS_PER_BLOCK))


@njit(**SERIAL)
def column_sum(db, a):
    """db = a.sum(0), adding rows in order. a: (N, O); db: (O,)."""
    _colsum_cols(db, a, 0, a.shape[1])


@njit(**SERIAL)
def linear_backward(dx, dw, db, dout, x, w, need_dx):
    """Gradients of out = x @ w + b: dw = x.T @ dout, db = dout.sum(0), dx = dout @ w.T.

    dx: (N, I) (untouched when need_dx is False); dw: (I, O); db: (O,); dout: (N, O);
    x: (N, I); w: (I, O). Transposes are passed to BLAS as layouts, never copied.
    """
    column_sum(db, dout)
    matmul_tn(dw, x, dout)
    if need_dx:
        matmul_nt(dx, dout, w)


# ---------------------------------------------------------------- losses

@njit(**SERIAL)
def _loss_rows(code, dpred, pred, y, eps, lo, hi):
    """Writes the gradient for rows lo..hi into dpred and returns their loss sum."""
    n_out = pred.shape[1]
    total = 0.0
    for i in range(lo, hi):
        if code == MSE:
            scale = 2.0 / n_out
            for j in range(n_out):
                e = pred[i, j] - y[i, j]
                total += e * e
                dpred[i, j] = scale * e
        elif code == CCE:
            for j in range(n_out):
                p = max(pred[i, j], eps)
                if y[i, j] != 0:
                    total -= y[i, j] * np.log(p)
                elif not pred[i, j] < np.inf:   # NaN or +inf: 0 * log(p) is NaN
                    total += 0.0 * pred[i, j]
                dpred[i, j] = -y[i, j] / p
        elif code == BCE:
            for j in range(n_out):
                p = min(max(pred[i, j], eps), 1.0 - eps)
                total -= y[i, j] * np.log(p) + (1.0 - y[i, j]) * np.log1p(-p)
                dpred[i, j] = (p - y[i, j]) / (p * (1.0 - p))
        elif code == SOFTMAX_CCE:
            # d/dz of -sum(y * log softmax(z)) = p * sum(y) - y  (= p - y for one-hot y).
            ysum = 0.0
            for j in range(n_out):
                ysum += y[i, j]
                if y[i, j] != 0:
                    total -= y[i, j] * np.log(max(pred[i, j], eps))
                elif not pred[i, j] < np.inf:   # as CCE
                    total += 0.0 * pred[i, j]
            for j in range(n_out):
                dpred[i, j] = pred[i, j] * ysum - y[i, j]
        elif code == HALF_SE:
            for j in range(n_out):
                e = pred[i, j] - y[i, j]
                total += e * e
                dpred[i, j] = e
        else:  # SIGMOID_BCE: d/dz of the binary cross-entropy of sigmoid(z) is p - y.
            for j in range(n_out):
                p = min(max(pred[i, j], eps), 1.0 - eps)
                total -= y[i, j] * np.log(p) + (1.0 - y[i, j]) * np.log1p(-p)
                dpred[i, j] = pred[i, j] - y[i, j]
    return total


@njit(**SERIAL)
def _loss_value(code, total, rows, n_out):
    """The loss from the sum of the chunk sums: MSE is a mean over all elements, HALF_SE
    half a mean over the outputs (summed over rows), the others sums."""
    if code == MSE:
        return total / (rows * n_out)
    if code == HALF_SE:
        return 0.5 * total / n_out
    return total


@njit(**PARALLEL)
def loss_forward_backward_par(code, dpred, pred, y, eps):
    """loss_forward_backward with the chunks in parallel, added in the same order."""
    n = pred.shape[0]
    partial = np.empty(_chunks(n, ROWS_PER_CHUNK))
    for c in prange(partial.shape[0]):
        partial[c] = _loss_rows(code, dpred, pred, y, eps, c * ROWS_PER_CHUNK,
                                min(n, (c + 1) * ROWS_PER_CHUNK))
    total = 0.0
    for c in range(partial.shape[0]):
        total += partial[c]
    return _loss_value(code, total, pred.shape[0], pred.shape[1])


@njit(**SERIAL)
def loss_forward_backward(code, dpred, pred, y, eps):
    """Loss value and its gradient in one pass; returns the loss, writes dL/dpred.

    MSE: mean(e**2) with e = pred - y, gradient 2 e / O (the original convention).
    HALF_SE: sum over rows of 0.5 * mean over outputs of e**2, gradient e: the gradient of
    half the *summed* squared error per row (scikit-learn's squared_error convention; the
    two agree for one output).
    CCE / BCE / fused pairs: sums over the batch and the outputs (no mean); p is clipped
    to [eps, 1] (CCE) or [eps, 1 - eps] (BCE) inside the logarithms.
    dpred, pred, y: (N, O). Rows are summed in chunks of ROWS_PER_CHUNK, then the chunk
    sums in order, as the parallel variant does.
    """
    n = pred.shape[0]
    total = 0.0
    for c in range(_chunks(n, ROWS_PER_CHUNK)):
        total += _loss_rows(code, dpred, pred, y, eps, c * ROWS_PER_CHUNK,
                            min(n, (c + 1) * ROWS_PER_CHUNK))
    return _loss_value(code, total, pred.shape[0], pred.shape[1])


# ---------------------------------------------------------------- optimizers

@njit(**SERIAL)
def _update_range(code, p, g, s1, s2, hp, lo, hi):
    """One optimizer step on p[lo:hi]; hp = (lr, a, b, eps, c1, c2), see optim_update."""
    lr = hp[0]
    if code == SGD:
        for k in range(lo, hi):
            p[k] -= lr * g[k]
    elif code == MOMENTUM:
        beta = hp[1]
        for k in range(lo, hi):
            s1[k] = beta * s1[k] + lr * g[k]
            p[k] -= s1[k]
    elif code == NESTEROV:
        beta = hp[1]
        for k in range(lo, hi):
            s1[k] = beta * s1[k] + lr * g[k]
            p[k] -= beta * s1[k] + lr * g[k]
    elif code == ADAM_LR:
        b1, b2, eps = hp[1], hp[2], hp[3]
        lr = lr * np.sqrt(hp[5]) / hp[4]   # the bias correction, folded into the step
        for k in range(lo, hi):
            s1[k] = b1 * s1[k] + (1.0 - b1) * g[k]
            s2[k] = b2 * s2[k] + (1.0 - b2) * g[k] * g[k]
            p[k] -= lr * s1[k] / (np.sqrt(s2[k]) + eps)
    elif code == RMSPROP:
        alpha, eps = hp[1], hp[3]
        for k in range(lo, hi):
            s1[k] = alpha * s1[k] + (1.0 - alpha) * g[k] * g[k]
            p[k] -= lr * g[k] / (np.sqrt(s1[k]) + eps)
    else:  # ADAM
        b1, b2, eps, c1, c2 = hp[1], hp[2], hp[3], hp[4], hp[5]
        for k in range(lo, hi):
            s1[k] = b1 * s1[k] + (1.0 - b1) * g[k]
            s2[k] = b2 * s2[k] + (1.0 - b2) * g[k] * g[k]
            p[k] -= lr * (s1[k] / c1) / (np.sqrt(s2[k] / c2) + eps)


@njit(**PARALLEL)
def optim_update_par(code, p, g, s1, s2, hp):
    """optim_update over chunks of the buffer in parallel (same bits)."""
    n = p.shape[0]
    per = ROWS_PER_CHUNK * 256
    for c in prange(_chunks(n, per)):
        _update_range(code, p, g, s1, s2, hp, c * per, min(n, (c + 1) * per))


@njit(**SERIAL)
def optim_update(code, p, g, s1, s2, hp):
    """One fused update of every parameter in the flat buffer ``p`` from gradients ``g``.

    SGD:      p -= lr g
    MOMENTUM: s1 = a s1 + lr g; p -= s1                                (a = beta)
    RMSPROP:  s1 = a s1 + (1 - a) g^2; p -= lr g / (sqrt(s1) + eps)     (a = alpha)
    ADAM:     s1 = a s1 + (1 - a) g; s2 = b s2 + (1 - b) g^2;
              p -= lr (s1 / c1) / (sqrt(s2 / c2) + eps), c1 = 1 - a^t, c2 = 1 - b^t
    NESTEROV: s1 = a s1 + lr g; p -= a s1 + lr g                       (a = beta)
    ADAM_LR:  s1, s2 as ADAM; p -= lr_t s1 / (sqrt(s2) + eps), lr_t = lr sqrt(c2) / c1
    hp = (lr, a, b, eps, c1, c2), float64. p, g, s1, s2: 1-D, same length.
    """
    _update_range(code, p, g, s1, s2, hp, 0, p.shape[0])


# ---------------------------------------------------------------- compiled training plan
# A model is a stack of blocks, block k = optional Linear (I_k -> O_k) then an activation
# (IDENTITY when none). ``spec`` holds one row per block:
#   (has_linear, act, I_k, O_k, offset of w_k in params, offset of b_k in params).
# All activations live in one flat buffer ``acts`` (block k at a_off[k], B * O_k values for
# batches of at most B rows); gradients ping-pong between the flat buffers g1 and g2.
# The same kernels as the layer-by-layer path run in the same order, so both paths give
# the same numbers.

# Array-to-slice assignments (a[lo:hi] = b) are avoided in the kernels: Numba's version
# formats shape-mismatch messages, which pulls Numba's string library into each kernel's
# compilation (seconds of a first run). Plain loops compile in a fraction of that.

@njit(**SERIAL)
def _copy_rows(dst, src, lo):
    """dst[r] = src[lo + r] for every row r of dst."""
    for r in range(dst.shape[0]):
        for j in range(dst.shape[1]):
            dst[r, j] = src[lo + r, j]


@njit(**SERIAL)
def _step_hyper(hp):
    """A copy of the optimizer's hp = (lr, a, b, eps, c1, c2) for per-step bias terms."""
    out = np.empty(6)
    for i in range(6):
        out[i] = hp[i] if i < hp.shape[0] else 1.0
    return out


@njit(**SERIAL)
def _bias_terms(step_hp, hp, t, opt_code):
    """c1 = 1 - b1^t, c2 = 1 - b2^t of the Adams at step t (1 for the others)."""
    adam = opt_code == ADAM or opt_code == ADAM_LR
    step_hp[4] = 1.0 - hp[1] ** t if adam else 1.0
    step_hp[5] = 1.0 - hp[2] ** t if adam else 1.0


@njit(**SERIAL)
def weight_square_sum(spec, params):
    """Sum of the squared weights of every Linear block in ``spec`` (biases excluded)."""
    total = 0.0
    for k in range(spec.shape[0]):
        has_lin, _, n_in, n_out, w_off, _ = spec[k]
        if has_lin:
            for q in range(w_off, w_off + n_in * n_out):
                total += params[q] * params[q]
    return total


@njit(**SERIAL)
def regularize_gradients(spec, params, grads, decay, rows):
    """Weight gradients become (g + decay * w) / rows, bias gradients g / rows: the
    gradient of (summed loss + 0.5 * decay * sum(w**2)) / rows, in scikit-learn's order of
    operations (rows = 1: plain L2 on the sum)."""
    for k in range(spec.shape[0]):
        has_lin, _, n_in, n_out, w_off, b_off = spec[k]
        if has_lin:
            for q in range(w_off, w_off + n_in * n_out):
                grads[q] = (grads[q] + decay * params[q]) / rows
            for q in range(b_off, b_off + n_out):
                grads[q] = grads[q] / rows


# The start of a buffer, as an int64 rather than the literal 0, so that _view compiles
# one signature (an offset into a buffer is an int64 everywhere else).
_START = np.int64(0)


@njit(**SERIAL)
def _view(flat, start, rows, cols):
    # A call, not inline="always": Numba's own inlining re-types the body at each of
    # plan_train's call sites. As a call, a first digits run compiled 15.2-16.0 s instead
    # of 17.8 s, with the same epoch time (interleaved runs).
    return flat[start:start + rows * cols].reshape(rows, cols)


@njit(**SERIAL)
def _plan_forward(spec, a_off, params, xin, acts):
    """Forward pass of one batch; returns the output block (rows, O_last)."""
    rows = xin.shape[0]
    inp = xin
    empty = params[:0]
    for k in range(spec.shape[0]):
        has_lin, act, n_in, n_out, w_off, b_off = spec[k]
        out = _view(acts, a_off[k], rows, n_out)
        if has_lin:
            matmul(out, inp, _view(params, w_off, n_in, n_out))
            _forward_rows(out, out, params[b_off:b_off + n_out], act, 0, rows)
        else:
            _forward_rows(out, inp, empty, act, 0, rows)
        inp = out
    return inp


# plan_train is the one entry point of the general plan (train epochs, one batch's
# gradient, predict): a first run compiles one kernel per dtype, and everything below it
# is a leaf kernel called directly, so no code is optimized and emitted twice.
TRAIN, GRADIENT, PREDICT = 0, 1, 2


@njit(**SERIAL)
def _gather_rows(xin, yin, x, y, order, lo):
    """xin[r] = x[order[lo + r]], yin[r] = y[order[lo + r]] for every row r of xin."""
    for r in range(xin.shape[0]):
        src = order[lo + r]
        for j in range(xin.shape[1]):
            xin[r, j] = x[src, j]
        for j in range(yin.shape[1]):
            yin[r, j] = y[src, j]


@njit(**SERIAL)
def plan_train(mode, spec, a_off, params, grads, x, y, orders, batch, loss_code, eps,
               opt_code, s1, s2, hp, t, acts, g1, g2, xb, yb, losses, out, decay, mean):
    """The compiled plan; returns the number of steps taken (TRAIN), else 0.

    TRAIN: train len(losses) epochs, losses[e] = mean batch loss of epoch e. A batch
    whose loss makes the epoch's sum NaN or Inf is not stepped on: training stops before
    its update, with losses[e] that NaN or Inf, so the weights and the optimizer's state
    stay those the loss was computed at. Fewer steps than len(losses) epochs take means
    that: the epochs run are then steps // (steps per epoch) + 1. orders: (epochs, N)
    row order per epoch, or (1, 0) for the natural order. hp = (lr, a, b, eps) of the
    optimizer (see optim_update); t = optimizer steps taken before.
    GRADIENT: the gradients of the batch x[orders[0]], y[orders[0]] into ``grads``, no
    update (a caller can combine several batches' gradients first); losses[0] = its loss.
    PREDICT: out = model(x), ``batch`` rows at a time.
    loss_code SOFTMAX_CCE / SIGMOID_BCE mean the last block's activation is fused into
    the loss: its backward is skipped.
    decay: L2 coefficient on the weights (not the biases): each batch's loss gains
    0.5 * decay * sum(w**2) and each weight gradient decay * w. mean: the batch objective,
    penalty included, is divided by the batch rows (see regularize_gradients), and
    losses[e] is the mean over samples (batch losses weighted by their rows).
    """
    n, n_in = x.shape
    n_out = out.shape[1]
    n_blocks = spec.shape[0]
    if mode == PREDICT:
        for lo in range(0, n, batch):
            hi = min(n, lo + batch)
            xin = _view(xb, _START, hi - lo, n_in)
            _copy_rows(xin, x, lo)
            pred = _plan_forward(spec, a_off, params, xin, acts)
            for r in range(hi - lo):
                for j in range(n_out):
                    out[lo + r, j] = pred[r, j]
        return 0
    fused = loss_code == SOFTMAX_CCE or loss_code == SIGMOID_BCE
    step_hp = _step_hyper(hp)
    taken = 0
    n_epochs = 1 if mode == GRADIENT else losses.shape[0]
    for e in range(n_epochs):
        order = orders[min(e, orders.shape[0] - 1)]
        total = 0.0
        n_batches = 0
        n_rows = order.shape[0] if mode == GRADIENT else n
        for lo in range(0, n_rows, batch):
            rows = min(n_rows, lo + batch) - lo
            if order.shape[0] == 0:
                xin, yin = x[lo:lo + rows], y[lo:lo + rows]
            else:
                xin = _view(xb, _START, rows, n_in)
                yin = _view(yb, _START, rows, n_out)
                _gather_rows(xin, yin, x, y, order, lo)
            # forward and loss; d = dL/d(output of the last block)
            pred = _plan_forward(spec, a_off, params, xin, acts)
            d = _view(g1, _START, rows, n_out)
            value = 0.0
            for c in range(_chunks(rows, ROWS_PER_CHUNK)):
                value += _loss_rows(loss_code, d, pred, yin, eps, c * ROWS_PER_CHUNK,
                                    min(rows, (c + 1) * ROWS_PER_CHUNK))
            total += _loss_value(loss_code, value, rows, n_out)
            if decay != 0.0:
                total += 0.5 * decay * weight_square_sum(spec, params)
            n_batches += 1
            if mode == TRAIN and not np.isfinite(total):   # no step on a NaN / Inf loss
                losses[e] = total
                return taken
            # backward, last block to first; d = dL/d(output of block k)
            use_g1 = True
            for k in range(n_blocks - 1, -1, -1):
                has_lin, act, k_in, k_out, w_off, b_off = spec[k]
                if fused and k == n_blocks - 1:
                    act = IDENTITY
                out_k = _view(acts, a_off[k], rows, k_out)
                nxt = _view(g2 if use_g1 else g1, _START, rows, k_in)
                if has_lin:
                    if act == SOFTMAX:
                        _backward_rows(d, d, out_k, act, 0, rows)
                        act = IDENTITY
                    _backward_cols(d, grads[b_off:b_off + k_out], d, out_k, act, 0, k_out)
                    inp = xin if k == 0 else _view(acts, a_off[k - 1], rows, k_in)
                    matmul_tn(_view(grads, w_off, k_in, k_out), inp, d)
                    if k > 0:
                        matmul_nt(nxt, d, _view(params, w_off, k_in, k_out))
                elif k > 0:
                    _backward_rows(nxt, d, out_k, act, 0, rows)
                d = nxt
                use_g1 = not use_g1
            if decay != 0.0 or mean:
                regularize_gradients(spec, params, grads, decay, rows if mean else 1)
            if mode == GRADIENT:
                losses[0] = total
                return 0
            t += 1.0
            taken += 1
            _bias_terms(step_hp, hp, t, opt_code)
            _update_range(opt_code, params, grads, s1, s2, step_hp, 0, params.shape[0])
        losses[e] = total / n if mean else total / n_batches
    return taken


# ---------------------------------------------------------------- tiny-net plan
# For networks whose every product has at most SMALL_GEMM_FLOPS multiply-adds per batch
# (XOR-sized), whole epochs run in three small functions over the flat buffers, with no
# per-layer array structures: nothing is sliced or reshaped per step, and they compile in
# a fraction of the general plan's time. Every value comes from the same arithmetic, in
# the same order, as the layer kernels at these sizes (the loop products of matmul*,
# _forward_rows, _backward_rows / _backward_cols, _loss_rows, _update_range), so the tiny
# plan, the general plan and the layer-by-layer path give the same bits. Row r of block
# k's output is acts[a_off[k] + r * O_k ...]; gradients ping-pong between g1 and g2.

@njit(**SERIAL)
def _tiny_forward(spec, a_off, params, x, order, lo, rows, acts):
    """Forward pass of rows order[lo:lo + rows] of x (rows lo.. when order is empty).
    The rows are first copied to acts[0:rows * I_0] (block k's input sits at a_off[k - 1],
    the batch's at 0), so the innermost loops read one flat buffer, with no branch."""
    n_in = x.shape[1]
    for r in range(rows):
        src = lo + r if order.shape[0] == 0 else order[lo + r]
        for i in range(n_in):
            acts[r * n_in + i] = x[src, i]
    for k in range(spec.shape[0]):
        has_lin, act, k_in, k_out, w_off, b_off = spec[k]
        inp = 0 if k == 0 else a_off[k - 1]
        for r in range(rows):
            row = a_off[k] + r * k_out
            for j in range(k_out):
                if has_lin:
                    s = 0.0
                    for i in range(k_in):
                        s += acts[inp + r * k_in + i] * params[w_off + i * k_out + j]
                    acts[row + j] = s
                    acts[row + j] = acts[row + j] + params[b_off + j]
                else:
                    acts[row + j] = acts[inp + r * k_in + j]
            if act == RELU:
                for j in range(row, row + k_out):
                    if acts[j] < 0:
                        acts[j] = 0.0
            elif act != IDENTITY:
                _tiny_exp_activation(acts, row, k_out, act)


@njit(**SERIAL)
def _tiny_exp_activation(acts, row, n, act):
    """Sigmoid, tanh or softmax of acts[row:row + n], as _sigmoid / _tanh / the softmax of
    _forward_rows compute them, with one call site of _exp (a small function compiles
    faster, and tiny rows gain nothing from separate vectorizable loops)."""
    m = acts[row]
    for j in range(row + 1, row + n):
        if acts[j] > m:
            m = acts[j]
    s = 0.0
    for j in range(row, row + n):
        v = acts[j]
        a = abs(v)
        arg = v - m if act == SOFTMAX else (-a if act == SIGMOID else -2.0 * a)
        e = _exp(arg)
        if act == SOFTMAX:
            acts[j] = e
            s += acts[j]
        elif act == SIGMOID:
            acts[j] = 1.0 / (1.0 + e) if v >= 0 else e / (1.0 + e)
        else:
            mm = _expm1_poly(-2.0 * min(a, 0.17))
            t = -mm / (2.0 + mm) if a < 0.17 else (1.0 - e) / (1.0 + e)
            acts[j] = v if v != v else math.copysign(t, v)
    if act == SOFTMAX:
        for j in range(row, row + n):
            acts[j] = acts[j] / s


@njit(**SERIAL)
def _tiny_backward(spec, a_off, params, grads, rows, acts, d, nxt, fused):
    """Backward pass of the batch from d = dL/d(output) (rows x O_last in ``d``), after
    _tiny_forward: fills ``grads``; ``d`` and ``nxt`` are scratch, overwritten."""
    n_blocks = spec.shape[0]
    for k in range(n_blocks - 1, -1, -1):
        has_lin, act, k_in, k_out, w_off, b_off = spec[k]
        if fused and k == n_blocks - 1:
            act = IDENTITY
        o = a_off[k]
        if act == SOFTMAX:   # closed form p * (g - <g, p>), row by row, in place
            for r in range(rows):
                s = 0.0
                for j in range(r * k_out, (r + 1) * k_out):
                    s += d[j] * acts[o + j]
                for j in range(r * k_out, (r + 1) * k_out):
                    d[j] = acts[o + j] * (d[j] - s)
            act = IDENTITY
        for j in range(rows * k_out):   # elementwise derivatives, in place
            if act == RELU:
                d[j] = d[j] if acts[o + j] > 0 else 0.0 * d[j]
            elif act == SIGMOID:
                d[j] = d[j] * (acts[o + j] * (1.0 - acts[o + j]))
            elif act == TANH:
                d[j] = d[j] * (1.0 - acts[o + j] * acts[o + j])
        if not has_lin:
            for j in range(rows * k_out):
                nxt[j] = d[j]
        else:
            for j in range(k_out):
                grads[b_off + j] = 0.0
            for r in range(rows):
                for j in range(k_out):
                    grads[b_off + j] += d[r * k_out + j]
            inp = 0 if k == 0 else a_off[k - 1]
            for i in range(k_in):
                for j in range(k_out):
                    s = 0.0
                    for r in range(rows):
                        s += acts[inp + r * k_in + i] * d[r * k_out + j]
                    grads[w_off + i * k_out + j] = s
            if k > 0:
                for r in range(rows):
                    for i in range(k_in):
                        s = 0.0
                        for j in range(k_out):
                            s += d[r * k_out + j] * params[w_off + i * k_out + j]
                        nxt[r * k_in + i] = s
        d, nxt = nxt, d


@njit(**SERIAL)
def tiny_train(spec, a_off, params, grads, x, y, orders, batch, loss_code, eps, opt_code,
               s1, s2, hp, t, acts, g1, g2, pred, dpred, yb, losses, out):
    """plan_train and plan_predict for tiny networks (see above), in one function so that
    a first run compiles one kernel. Trains len(losses) epochs (the natural order is
    orders of shape (1, 0)), then, when ``out`` has rows, writes model(x) into it.
    ``acts`` holds the batch's input rows at 0 and block k's output at a_off[k] (so
    a_off[0] >= batch * I_0).
    pred, dpred, yb: (batch, O_last) views of the last block's output in ``acts``, of
    ``g1``, and a buffer for the batch's targets. Returns the number of steps taken; as
    plan_train, none on a NaN or Inf loss."""
    n = x.shape[0]
    n_out = pred.shape[1]
    fused = loss_code == SOFTMAX_CCE or loss_code == SIGMOID_BCE
    step_hp = _step_hyper(hp)
    taken = 0
    for e in range(losses.shape[0]):
        order = orders[min(e, orders.shape[0] - 1)]   # (1, 0) orders: natural order
        total = 0.0
        n_batches = 0
        for lo in range(0, n, batch):
            rows = min(n, lo + batch) - lo
            _tiny_forward(spec, a_off, params, x, order, lo, rows, acts)
            for r in range(rows):
                src = lo + r if order.shape[0] == 0 else order[lo + r]
                for j in range(n_out):
                    yb[r, j] = y[src, j]
            value = 0.0
            for c in range(_chunks(rows, ROWS_PER_CHUNK)):
                value += _loss_rows(loss_code, dpred, pred, yb, eps, c * ROWS_PER_CHUNK,
                                    min(rows, (c + 1) * ROWS_PER_CHUNK))
            total += _loss_value(loss_code, value, rows, n_out)
            n_batches += 1
            if not np.isfinite(total):   # no step on a NaN / Inf loss
                losses[e] = total
                return taken
            _tiny_backward(spec, a_off, params, grads, rows, acts, g1, g2, fused)
            t += 1.0
            taken += 1
            _bias_terms(step_hp, hp, t, opt_code)
            _update_range(opt_code, params, grads, s1, s2, step_hp, 0, params.shape[0])
        losses[e] = total / n_batches
    last = a_off[spec.shape[0] - 1]
    no_order = orders[0, :0]
    for lo in range(0, out.shape[0], batch):
        rows = min(out.shape[0], lo + batch) - lo
        _tiny_forward(spec, a_off, params, x, no_order, lo, rows, acts)
        for r in range(rows):
            for j in range(n_out):
                out[lo + r, j] = acts[last + r * n_out + j]
    return taken


# ---------------------------------------------------------------- compiling ahead
# A first run spends most of its time compiling the leaf kernels that plan_train and
# tiny_train call; Numba compiles them one after the other, in the order its type
# inference meets them. kernels/ahead.py starts a second process that compiles the
# second half of them (in reverse order) into the on-disk cache, and the first process
# then loads them instead of compiling them. These two functions never run their
# bodies (batch is never negative): compiling them compiles, with the very argument
# types the plans pass, the leaves each plan calls last. Not cached: only the leaves are
# worth keeping.

@njit(**dict(SERIAL, cache=False))
def plan_tail(mode, spec, a_off, params, grads, x, y, orders, batch, loss_code, eps,
              opt_code, s1, s2, hp, t, acts, g1, g2, xb, yb, losses, out, decay, mean):
    """plan_train's last callees: _loss_rows, then from _update_range backwards; then
    loss_forward_backward, which validation calls after an epoch."""
    if batch >= 0:
        return 0
    n, n_in = x.shape
    n_out = out.shape[1]
    step_hp = _step_hyper(hp)
    rows = min(n, batch)
    t += 1.0
    d = _view(g1, _START, rows, n_out)
    if x.shape[0] == 0:
        xin, yin = x[0:rows], y[0:rows]
    else:
        xin = _view(xb, _START, rows, n_in)
        yin = _view(yb, _START, rows, n_out)
    # _loss_rows first: the plan needs it right after the forward pass, long before the
    # backward kernels below (measured: the plan compiled it itself when it came last).
    total = _loss_rows(loss_code, d, d, yin, eps, 0 * ROWS_PER_CHUNK,
                       min(rows, ROWS_PER_CHUNK))
    _update_range(opt_code, params, grads, s1, s2, step_hp, 0, params.shape[0])
    _bias_terms(step_hp, hp, t, opt_code)
    regularize_gradients(spec, params, grads, decay, rows if mean else 1)
    has_lin, act, k_in, k_out, w_off, b_off = spec[0]
    out_k = _view(acts, a_off[0], rows, k_out)
    nxt = _view(g2 if mode == 0 else g1, _START, rows, k_in)
    matmul_nt(nxt, d, _view(params, w_off, k_in, k_out))
    inp = xin if mode == 0 else _view(acts, a_off[0], rows, k_in)
    matmul_tn(_view(grads, w_off, k_in, k_out), inp, d)
    _backward_cols(d, grads[b_off:b_off + k_out], d, out_k, act, 0, k_out)
    _backward_rows(nxt, d, out_k, act, 0, rows)
    total += 0.5 * decay * weight_square_sum(spec, params)
    total += _loss_value(loss_code, total, rows, n_out)
    # Not the plan's: the loss kernel that a validation loss (fastbp.loss, from Python)
    # calls after each epoch, with the same argument types. Needed once the plan has run.
    total += loss_forward_backward(loss_code, d, d, yin, eps)
    return int(total)


@njit(**dict(SERIAL, cache=False))
def tiny_tail(spec, a_off, params, grads, x, y, orders, batch, loss_code, eps, opt_code,
              s1, s2, hp, t, acts, g1, g2, pred, dpred, yb, losses, out):
    """tiny_train's last callees, from _update_range backwards (see above)."""
    if batch >= 0:
        return 0
    rows = min(x.shape[0], batch)
    fused = loss_code == SOFTMAX_CCE or loss_code == SIGMOID_BCE
    step_hp = _step_hyper(hp)
    t += 1.0
    _update_range(opt_code, params, grads, s1, s2, step_hp, 0, params.shape[0])
    _bias_terms(step_hp, hp, t, opt_code)
    _tiny_backward(spec, a_off, params, grads, rows, acts, g1, g2, fused)
    value = _loss_rows(loss_code, dpred, pred, yb, eps, 0 * ROWS_PER_CHUNK,
                       min(rows, ROWS_PER_CHUNK))
    return int(_loss_value(loss_code, value, rows, pred.shape[1]))


from .cache import harden  # noqa: E402  (after every kernel above is defined)

harden(globals())
