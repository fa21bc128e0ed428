/* Fused float16 kernels for the CPU paths that stream stores (modgap.arrays uses them when present).
 *
 * Why compiled code: NumPy has no vectorised float16 <-> float32 cast on x86 (2-10 ns per value here, against
 * ~0.1 ns for the F16C instructions), and an aligner pass makes ~10 NumPy passes over every chunk. Each kernel
 * below makes one pass instead, in the CPU's own conversion instructions, with the GIL released so that
 * modgap's chunk threads run side by side.
 *
 * The kernels exist for x86-64 CPUs with AVX2, F16C and FMA (every x86 server CPU since 2013); elsewhere
 * supported() is False and modgap keeps its NumPy code. Conversions give NumPy's bits exactly; the one
 * difference, the payload of a signalling NaN, is reported (return value) so the caller redoes such arrays
 * in NumPy. Arguments are C-contiguous buffers (modgap.arrays checks shapes and dtypes before calling).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define MODGAP_X86 1
#define SIMD __attribute__((target("avx2,f16c,fma")))
#endif

#ifdef MODGAP_X86

/* Horizontal sum of 8 floats, in double (the per-row figures below are made in double). */
SIMD static double hsum(__m256 v) {
    __m256d lo = _mm256_cvtps_pd(_mm256_castps256_ps128(v));
    __m256d hi = _mm256_cvtps_pd(_mm256_extractf128_ps(v, 1));
    __m256d s = _mm256_add_pd(lo, hi);
    __m128d t = _mm_add_pd(_mm256_castpd256_pd128(s), _mm256_extractf128_pd(s, 1));
    return _mm_cvtsd_f64(_mm_add_sd(t, _mm_unpackhi_pd(t, t)));
}

/* 8 float16 values (bits) from any address. */
SIMD static __m256 load8h(const uint16_t *p) { return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p)); }

/* Up to 7 trailing float16 values, zeros after them. */
SIMD static __m256 load_tail_h(const uint16_t *p, Py_ssize_t k) {
    uint16_t tmp[8] = {0};
    for (Py_ssize_t j = 0; j < k; j++) tmp[j] = p[j];
    return load8h(tmp);
}

SIMD static __m256 load_tail_f(const float *p, Py_ssize_t k) {
    float tmp[8] = {0};
    for (Py_ssize_t j = 0; j < k; j++) tmp[j] = p[j];
    return _mm256_loadu_ps(tmp);
}

SIMD static void store_tail_h(uint16_t *p, __m256 v, Py_ssize_t k) {
    uint16_t tmp[8];
    _mm_storeu_si128((__m128i *)tmp, _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT));
    for (Py_ssize_t j = 0; j < k; j++) p[j] = tmp[j];
}

/* Whether any of 8 float16 bit patterns is a NaN (exponent all ones, mantissa not zero). */
SIMD static int any_nan_h(__m128i h) {
    __m128i a = _mm_and_si128(h, _mm_set1_epi16(0x7fff));
    return _mm_movemask_epi8(_mm_cmpgt_epi16(a, _mm_set1_epi16(0x7c00))) != 0;
}

SIMD static int half_to_float_x86(const uint16_t *src, float *dst, Py_ssize_t n) {
    int nan = 0;
    Py_ssize_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m128i h = _mm_loadu_si128((const __m128i *)(src + i));
        nan |= any_nan_h(h);
        _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(h));
    }
    for (; i < n; i++) {
        nan |= (src[i] & 0x7fff) > 0x7c00;
        dst[i] = _cvtsh_ss(src[i]);
    }
    return nan;
}

SIMD static int float_to_half_x86(const float *src, uint16_t *dst, Py_ssize_t n) {
    int nan = 0;
    Py_ssize_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 v = _mm256_loadu_ps(src + i);
        nan |= _mm256_movemask_ps(_mm256_cmp_ps(v, v, _CMP_UNORD_Q));
        _mm_storeu_si128((__m128i *)(dst + i), _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT));
    }
    for (; i < n; i++) {
        nan |= isnan(src[i]);
        dst[i] = _cvtss_sh(src[i], _MM_FROUND_TO_NEAREST_INT);
    }
    return nan;
}

/* float16 rows -> float32 rows and their float32 norms, one pass. A NaN or Inf gives a non-finite norm
 * (the bad-row rule); such rows' float32 values are not used, so their NaN payloads do not matter. */
SIMD static void half_rows_x86(const uint16_t *src, float *dst, float *norms, Py_ssize_t rows, Py_ssize_t dim) {
    for (Py_ssize_t r = 0; r < rows; r++) {
        const uint16_t *s = src + r * dim;
        float *d = dst + r * dim;
        __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
        Py_ssize_t j = 0;
        for (; j + 16 <= dim; j += 16) {
            __m256 v0 = load8h(s + j), v1 = load8h(s + j + 8);
            _mm256_storeu_ps(d + j, v0);
            _mm256_storeu_ps(d + j + 8, v1);
            a0 = _mm256_fmadd_ps(v0, v0, a0);
            a1 = _mm256_fmadd_ps(v1, v1, a1);
        }
        for (; j < dim; j += 8) {
            Py_ssize_t k = dim - j < 8 ? dim - j : 8;
            __m256 v = load_tail_h(s + j, k);
            float tmp[8];
            _mm256_storeu_ps(tmp, v);
            for (Py_ssize_t q = 0; q < k; q++) d[j + q] = tmp[q];
            a0 = _mm256_fmadd_ps(v, v, a0);
        }
        norms[r] = (float)sqrt(hsum(_mm256_add_ps(a0, a1)));
    }
}

/* Dot products of one row with two vectors, in float32 lanes summed in double. */
SIMD static void dots2(const float *x, const float *c, const float *e, Py_ssize_t dim, double *xc, double *xe) {
    __m256 ac = _mm256_setzero_ps(), ae = _mm256_setzero_ps();
    Py_ssize_t j = 0;
    for (; j + 8 <= dim; j += 8) {
        __m256 v = _mm256_loadu_ps(x + j);
        ac = _mm256_fmadd_ps(v, _mm256_loadu_ps(c + j), ac);
        ae = _mm256_fmadd_ps(v, _mm256_loadu_ps(e + j), ae);
    }
    if (j < dim) {
        Py_ssize_t k = dim - j;
        __m256 v = load_tail_f(x + j, k);
        ac = _mm256_fmadd_ps(v, load_tail_f(c + j, k), ac);
        ae = _mm256_fmadd_ps(v, load_tail_f(e + j, k), ae);
    }
    *xc = hsum(ac);
    *xe = hsum(ae);
}

/* Dot product of one row with a vector, in float32 lanes summed in double. */
SIMD static double dot1(const float *x, const float *c, Py_ssize_t dim) {
    __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
    Py_ssize_t j = 0;
    for (; j + 16 <= dim; j += 16) {
        a0 = _mm256_fmadd_ps(_mm256_loadu_ps(x + j), _mm256_loadu_ps(c + j), a0);
        a1 = _mm256_fmadd_ps(_mm256_loadu_ps(x + j + 8), _mm256_loadu_ps(c + j + 8), a1);
    }
    for (; j < dim; j += 8) {
        Py_ssize_t k = dim - j < 8 ? dim - j : 8;
        a0 = _mm256_fmadd_ps(load_tail_f(x + j, k), load_tail_f(c + j, k), a0);
    }
    return hsum(_mm256_add_ps(a0, a1));
}

/* ReAlign's output rows in float16 (the formulas of modgap.align.methods.ReAlign.transform_rows):
 * x̂ = x / |x|, y = s x̂ + c with |y|^2 = s^2 + 2 s x̂·c + |c|^2, ŷ = y / |y|, out = (ŷ + e) / |ŷ + e| with
 * |ŷ + e|^2 = 1 + 2 ŷ·e + |e|^2, i.e. out = a x + b c + g e per row. Returns the first row whose |y|^2 is
 * below `degenerate` (cancellation: the caller takes its direct formula for the chunk), or -1. */
SIMD static Py_ssize_t realign_rows_x86(const float *x, const float *norms, const float *c, const float *e,
                                        double s, double cc, double ce, double ee, double degenerate,
                                        uint16_t *out, Py_ssize_t rows, Py_ssize_t dim) {
    for (Py_ssize_t r = 0; r < rows; r++) {
        const float *xr = x + r * dim;
        uint16_t *o = out + r * dim;
        double xc, xe, n = norms[r];
        dots2(xr, c, e, dim, &xc, &xe);
        double m2 = s * s + 2.0 * s * xc / n + cc;
        if (!(m2 >= degenerate)) return r;
        double inv_m = 1.0 / sqrt(m2);
        double ye = (s * xe / n + ce) * inv_m;
        double inv_z = 1.0 / sqrt(1.0 + 2.0 * ye + ee);
        __m256 a = _mm256_set1_ps((float)(s * inv_m * inv_z / n));
        __m256 b = _mm256_set1_ps((float)(inv_m * inv_z)), g = _mm256_set1_ps((float)inv_z);
        Py_ssize_t j = 0;
        for (; j + 8 <= dim; j += 8) {
            __m256 v = _mm256_mul_ps(a, _mm256_loadu_ps(xr + j));
            v = _mm256_fmadd_ps(b, _mm256_loadu_ps(c + j), v);
            v = _mm256_fmadd_ps(g, _mm256_loadu_ps(e + j), v);
            _mm_storeu_si128((__m128i *)(o + j), _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT));
        }
        if (j < dim) {
            Py_ssize_t k = dim - j;
            __m256 v = _mm256_mul_ps(a, load_tail_f(xr + j, k));
            v = _mm256_fmadd_ps(b, load_tail_f(c + j, k), v);
            v = _mm256_fmadd_ps(g, load_tail_f(e + j, k), v);
            store_tail_h(o + j, v, k);
        }
    }
    return -1;
}

/* ReAlign's second fit pass (modgap.align.methods.ReAlign.accumulate): adds sum over rows of s x̂ / |y| to
 * acc (float64, dim) and returns the sum of 1 / |y| in *inv_m_sum, with |y|^2 = s^2 + 2 s x̂·c + |c|^2 as in
 * realign_rows. Returns the first row whose |y|^2 is below `degenerate` (acc is then partial: the caller
 * discards it and takes its NumPy code for the chunk), or -1. */
SIMD static Py_ssize_t realign_sums_x86(const float *x, const float *norms, const float *c, double s, double cc,
                                        double degenerate, double *acc, double *inv_m_sum, Py_ssize_t rows,
                                        Py_ssize_t dim) {
    double total = 0.0;
    for (Py_ssize_t r = 0; r < rows; r++) {
        const float *xr = x + r * dim;
        double n = norms[r], m2 = s * s + 2.0 * s * dot1(xr, c, dim) / n + cc;
        if (!(m2 >= degenerate)) return r;
        double inv_m = 1.0 / sqrt(m2);
        total += inv_m;
        __m256d w = _mm256_set1_pd(s * inv_m / n);
        Py_ssize_t j = 0;
        for (; j + 8 <= dim; j += 8) {
            __m256 v = _mm256_loadu_ps(xr + j);
            __m256d lo = _mm256_cvtps_pd(_mm256_castps256_ps128(v));
            __m256d hi = _mm256_cvtps_pd(_mm256_extractf128_ps(v, 1));
            _mm256_storeu_pd(acc + j, _mm256_fmadd_pd(w, lo, _mm256_loadu_pd(acc + j)));
            _mm256_storeu_pd(acc + j + 4, _mm256_fmadd_pd(w, hi, _mm256_loadu_pd(acc + j + 4)));
        }
        for (; j < dim; j++) acc[j] += (s * inv_m / n) * xr[j];
    }
    *inv_m_sum = total;
    return -1;
}

static int cpu_ok(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("f16c") && __builtin_cpu_supports("fma");
}
#else
static int cpu_ok(void) { return 0; }
#endif

static int SUPPORTED = 0;

/* Buffers: `view` fills Py_buffer views of contiguous arrays; `need` checks a size in bytes. */
static int need(Py_buffer *b, Py_ssize_t bytes, const char *name) {
    if (b->len < bytes) {
        PyErr_Format(PyExc_ValueError, "%s: buffer of %zd bytes, %zd needed", name, b->len, bytes);
        return 0;
    }
    return 1;
}

static PyObject *unsupported(void) {
    PyErr_SetString(PyExc_RuntimeError, "modgap._kernels: this CPU lacks AVX2/F16C/FMA (check supported())");
    return NULL;
}

static PyObject *py_supported(PyObject *self, PyObject *args) { return PyBool_FromLong(SUPPORTED); }

/* One element-wise conversion: src holds n values of src_size bytes, out needs n of out_size bytes. */
typedef int (*convert_fn)(const void *, void *, Py_ssize_t);

static PyObject *convert(PyObject *args, convert_fn fn, Py_ssize_t src_size, Py_ssize_t out_size, const char *what) {
    Py_buffer src, dst;
    if (!PyArg_ParseTuple(args, "y*w*", &src, &dst)) return NULL;
    PyObject *res = NULL;
    Py_ssize_t n = src.len / src_size;
    if (!SUPPORTED) res = unsupported();
    else if (need(&dst, out_size * n, what)) {
        int nan = 0;
        Py_BEGIN_ALLOW_THREADS
        nan = fn(src.buf, dst.buf, n);
        Py_END_ALLOW_THREADS
        res = PyBool_FromLong(nan);
    }
    PyBuffer_Release(&src);
    PyBuffer_Release(&dst);
    return res;
}

#ifdef MODGAP_X86
#define HALF_TO_FLOAT ((convert_fn)half_to_float_x86)
#define FLOAT_TO_HALF ((convert_fn)float_to_half_x86)
#else
#define HALF_TO_FLOAT NULL
#define FLOAT_TO_HALF NULL
#endif

static PyObject *py_half_to_float(PyObject *self, PyObject *args) {
    return convert(args, HALF_TO_FLOAT, 2, 4, "half_to_float out");
}

static PyObject *py_float_to_half(PyObject *self, PyObject *args) {
    return convert(args, FLOAT_TO_HALF, 4, 2, "float_to_half out");
}

static PyObject *py_half_rows(PyObject *self, PyObject *args) {
    Py_buffer src, dst, norms;
    Py_ssize_t dim;
    if (!PyArg_ParseTuple(args, "y*w*w*n", &src, &dst, &norms, &dim)) return NULL;
    PyObject *res = NULL;
    Py_ssize_t rows = dim > 0 ? src.len / (2 * dim) : 0;
    if (!SUPPORTED) res = unsupported();
    else if (dim <= 0 || src.len != 2 * rows * dim)
        PyErr_SetString(PyExc_ValueError, "half_rows: the source is not whole rows of dim values");
    else if (need(&dst, 4 * rows * dim, "half_rows out") && need(&norms, 4 * rows, "half_rows norms")) {
#ifdef MODGAP_X86
        Py_BEGIN_ALLOW_THREADS
        half_rows_x86(src.buf, dst.buf, norms.buf, rows, dim);
        Py_END_ALLOW_THREADS
#endif
        res = Py_NewRef(Py_None);
    }
    PyBuffer_Release(&src);
    PyBuffer_Release(&dst);
    PyBuffer_Release(&norms);
    return res;
}

static PyObject *py_realign_rows(PyObject *self, PyObject *args) {
    Py_buffer x, norms, c, e, out;
    double s, cc, ce, ee, degenerate;
    if (!PyArg_ParseTuple(args, "y*y*y*y*dddddw*", &x, &norms, &c, &e, &s, &cc, &ce, &ee, &degenerate, &out))
        return NULL;
    PyObject *res = NULL;
    Py_ssize_t dim = c.len / 4, rows = norms.len / 4;
    if (!SUPPORTED) res = unsupported();
    else if (dim == 0 || e.len != c.len || x.len != 4 * rows * dim)
        PyErr_SetString(PyExc_ValueError, "realign_rows: x must be (len(norms), len(c)) and e like c");
    else if (need(&out, 2 * rows * dim, "realign_rows out")) {
        Py_ssize_t first = -1;
#ifdef MODGAP_X86
        Py_BEGIN_ALLOW_THREADS
        first = realign_rows_x86(x.buf, norms.buf, c.buf, e.buf, s, cc, ce, ee, degenerate, out.buf, rows, dim);
        Py_END_ALLOW_THREADS
#endif
        res = PyLong_FromSsize_t(first);
    }
    PyBuffer_Release(&x);
    PyBuffer_Release(&norms);
    PyBuffer_Release(&c);
    PyBuffer_Release(&e);
    PyBuffer_Release(&out);
    return res;
}

static PyObject *py_realign_sums(PyObject *self, PyObject *args) {
    Py_buffer x, norms, c, acc;
    double s, cc, degenerate;
    if (!PyArg_ParseTuple(args, "y*y*y*dddw*", &x, &norms, &c, &s, &cc, &degenerate, &acc)) return NULL;
    PyObject *res = NULL;
    Py_ssize_t dim = c.len / 4, rows = norms.len / 4;
    if (!SUPPORTED) res = unsupported();
    else if (dim == 0 || x.len != 4 * rows * dim)
        PyErr_SetString(PyExc_ValueError, "realign_sums: x must be (len(norms), len(c))");
    else if (need(&acc, 8 * dim, "realign_sums acc")) {
        Py_ssize_t first = -1;
        double inv_m_sum = 0.0;
#ifdef MODGAP_X86
        Py_BEGIN_ALLOW_THREADS
        first = realign_sums_x86(x.buf, norms.buf, c.buf, s, cc, degenerate, acc.buf, &inv_m_sum, rows, dim);
        Py_END_ALLOW_THREADS
#endif
        res = Py_BuildValue("nd", first, inv_m_sum);
    }
    PyBuffer_Release(&x);
    PyBuffer_Release(&norms);
    PyBuffer_Release(&c);
    PyBuffer_Release(&acc);
    return res;
}

static PyMethodDef methods[] = {
    {"supported", py_supported, METH_NOARGS, "Whether this CPU runs the kernels (x86-64 with AVX2, F16C, FMA)."},
    {"half_to_float", py_half_to_float, METH_VARARGS,
     "half_to_float(src_f16, out_f32) -> bool: convert; True when src holds a NaN (payloads may differ)."},
    {"float_to_half", py_float_to_half, METH_VARARGS,
     "float_to_half(src_f32, out_f16) -> bool: convert, nearest even; True when src holds a NaN."},
    {"half_rows", py_half_rows, METH_VARARGS,
     "half_rows(src_f16, out_f32, norms_f32, dim): float16 rows to float32 with their norms, one pass."},
    {"realign_rows", py_realign_rows, METH_VARARGS,
     "realign_rows(x, norms, c, e, s, cc, ce, ee, degenerate, out_f16) -> int: ReAlign's output rows in "
     "float16; the first degenerate row, or -1."},
    {"realign_sums", py_realign_sums, METH_VARARGS,
     "realign_sums(x, norms, c, s, cc, degenerate, acc_f64) -> (int, float): adds ReAlign's second-pass sums "
     "of s x/|x|/|y| to acc; the first degenerate row or -1, and the sum of 1/|y|."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_kernels", NULL, -1, methods};

PyMODINIT_FUNC PyInit__kernels(void) {
    SUPPORTED = cpu_ok();
    return PyModule_Create(&module);
}
