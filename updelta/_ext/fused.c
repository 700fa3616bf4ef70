/*
 * updelta._fused: one fused pass over a block of base/fine-tuned weights.
 *
 * This is the CPU fast path of the "cheap" metric family defined in
 * updelta/metrics/elementwise.py (the pure-torch reference, which is also the
 * CUDA path and the fallback when this extension is absent). It must give the
 * same partial sums as `elementwise.partial_sums` up to float rounding of the
 * accumulators; tests/metrics/test_elementwise.py checks that.
 *
 * Inputs are raw little-endian storage: kind 0 = float32, kind 1 = bfloat16
 * (the top 16 bits of a float32, so widening is a shift and is exact).
 * Element pairs where either value is NaN/Inf are skipped and counted.
 * The loops are written branch-free so the compiler can vectorise them; the
 * GIL is released while they run so two Python threads can use two cores.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>
#include <math.h>

static inline float bits2f(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }
static inline uint32_t f2bits(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }

typedef struct {
    int64_t used, nfa, nfb, eq, at, rt;
    double ss_d, ss_a, dot, sabs;
    float maxd;
} Stats;

#define LOAD_F32(p, i) (((const uint32_t *)(p))[i])
#define LOAD_BF16(p, i) (((uint32_t)((const uint16_t *)(p))[i]) << 16)

#define STATS_BODY(LA, LB, HIST)                                              \
    for (Py_ssize_t i = 0; i < n; i++) {                                      \
        uint32_t ua = LA(pa, i), ub = LB(pb, i);                              \
        int fa = ((ua >> 23) & 0xFFu) != 0xFFu;                               \
        int fb = ((ub >> 23) & 0xFFu) != 0xFFu;                               \
        nfa += !fa; nfb += !fb;                                               \
        int m = fa & fb;                                                      \
        float a = m ? bits2f(ua) : 0.0f;                                      \
        float b = m ? bits2f(ub) : 0.0f;                                      \
        float d = b - a;                                                      \
        float ad = fabsf(d);                                                  \
        double dd = (double)d, da = (double)a;                                \
        ss_d += dd * dd; ss_a += da * da; dot += dd * da; sabs += (double)ad;  \
        maxd = ad > maxd ? ad : maxd;                                         \
        used += m;                                                            \
        eq += m & (a == b);                                                   \
        at += m & (ad <= atol);                                               \
        float big = fabsf(a) > fabsf(b) ? fabsf(a) : fabsf(b);                \
        rt += m & (ad <= eta * big);                                          \
        HIST                                                                  \
    }

#define HIST_ON                                                               \
    if (m) {                                                                  \
        if (ad == 0.0f) hist[256]++;                                          \
        else hist[(f2bits(ad) >> 23) & 0xFFu]++;                              \
    }
#define HIST_OFF

#define DEF_STATS(NAME, LA, LB, HIST)                                         \
static void NAME(const void *pa, const void *pb, Py_ssize_t n, float atol,    \
                 float eta, int64_t *hist, Stats *s) {                        \
    int64_t used = 0, nfa = 0, nfb = 0, eq = 0, at = 0, rt = 0;               \
    double ss_d = 0, ss_a = 0, dot = 0, sabs = 0;                             \
    float maxd = 0.0f;                                                        \
    (void)hist;                                                               \
    STATS_BODY(LA, LB, HIST)                                                  \
    s->used += used; s->nfa += nfa; s->nfb += nfb; s->eq += eq;               \
    s->at += at; s->rt += rt; s->ss_d += ss_d; s->ss_a += ss_a;               \
    s->dot += dot; s->sabs += sabs; if (maxd > s->maxd) s->maxd = maxd;       \
}

DEF_STATS(stats_ff, LOAD_F32, LOAD_F32, HIST_OFF)
DEF_STATS(stats_fb, LOAD_F32, LOAD_BF16, HIST_OFF)
DEF_STATS(stats_bf, LOAD_BF16, LOAD_F32, HIST_OFF)
DEF_STATS(stats_bb, LOAD_BF16, LOAD_BF16, HIST_OFF)
DEF_STATS(stats_ff_h, LOAD_F32, LOAD_F32, HIST_ON)
DEF_STATS(stats_fb_h, LOAD_F32, LOAD_BF16, HIST_ON)
DEF_STATS(stats_bf_h, LOAD_BF16, LOAD_F32, HIST_ON)
DEF_STATS(stats_bb_h, LOAD_BF16, LOAD_BF16, HIST_ON)

typedef void (*stats_fn)(const void *, const void *, Py_ssize_t, float, float, int64_t *, Stats *);
static stats_fn STATS_FNS[2][2][2] = {
    {{stats_ff, stats_ff_h}, {stats_fb, stats_fb_h}},
    {{stats_bf, stats_bf_h}, {stats_bb, stats_bb_h}},
};

static int get_kind_buffer(PyObject *obj, int kind, Py_buffer *view, Py_ssize_t *n) {
    if (kind != 0 && kind != 1) {
        PyErr_SetString(PyExc_ValueError, "kind must be 0 (float32) or 1 (bfloat16)");
        return -1;
    }
    if (PyObject_GetBuffer(obj, view, PyBUF_C_CONTIGUOUS) < 0) return -1;
    Py_ssize_t item = kind == 0 ? 4 : 2;
    if (view->len % item) {
        PyBuffer_Release(view);
        PyErr_SetString(PyExc_ValueError, "buffer length is not a multiple of the element size");
        return -1;
    }
    *n = view->len / item;
    return 0;
}

/* stats(a, kind_a, b, kind_b, atol, eta, hist_or_None) -> tuple */
static PyObject *py_stats(PyObject *self, PyObject *args) {
    PyObject *oa, *ob, *oh;
    int ka, kb;
    float atol, eta;
    if (!PyArg_ParseTuple(args, "OiOiffO", &oa, &ka, &ob, &kb, &atol, &eta, &oh)) return NULL;
    Py_buffer va, vb, vh;
    Py_ssize_t na, nb;
    if (get_kind_buffer(oa, ka, &va, &na) < 0) return NULL;
    if (get_kind_buffer(ob, kb, &vb, &nb) < 0) { PyBuffer_Release(&va); return NULL; }
    int64_t *hist = NULL;
    int has_hist = oh != Py_None;
    if (has_hist) {
        if (PyObject_GetBuffer(oh, &vh, PyBUF_C_CONTIGUOUS | PyBUF_WRITABLE) < 0) goto fail;
        if (vh.len != 257 * 8) {
            PyBuffer_Release(&vh);
            PyErr_SetString(PyExc_ValueError, "hist must be a writable int64 array of length 257");
            goto fail;
        }
        hist = (int64_t *)vh.buf;
    }
    if (na != nb) {
        if (has_hist) PyBuffer_Release(&vh);
        PyErr_SetString(PyExc_ValueError, "blocks differ in element count");
        goto fail;
    }
    Stats s;
    memset(&s, 0, sizeof s);
    Py_BEGIN_ALLOW_THREADS
    STATS_FNS[ka][kb][has_hist](va.buf, vb.buf, na, atol, eta, hist, &s);
    Py_END_ALLOW_THREADS
    if (has_hist) PyBuffer_Release(&vh);
    PyBuffer_Release(&va);
    PyBuffer_Release(&vb);
    return Py_BuildValue("(LLLddddfLLL)", (long long)s.used, (long long)s.nfa, (long long)s.nfb,
                         s.ss_d, s.ss_a, s.dot, s.sabs, s.maxd,
                         (long long)s.eq, (long long)s.at, (long long)s.rt);
fail:
    PyBuffer_Release(&va);
    PyBuffer_Release(&vb);
    return NULL;
}

/*
 * pair(base, a, b, atol, eta) on float32 blocks (already widened) ->
 * (used, dot_ab, ss_a, ss_b, both_exact, both_atol, both_rtol, sign_agree)
 * where D_a = a - base, D_b = b - base, "both_*" counts elements changed in
 * both runs under each convention, and sign_agree counts elements changed in
 * both (exact convention) whose deltas have the same sign.
 */
static PyObject *py_pair(PyObject *self, PyObject *args) {
    PyObject *o0, *oa, *ob;
    float atol, eta;
    if (!PyArg_ParseTuple(args, "OOOff", &o0, &oa, &ob, &atol, &eta)) return NULL;
    Py_buffer v0, va, vb;
    Py_ssize_t n0, na, nb;
    if (get_kind_buffer(o0, 0, &v0, &n0) < 0) return NULL;
    if (get_kind_buffer(oa, 0, &va, &na) < 0) { PyBuffer_Release(&v0); return NULL; }
    if (get_kind_buffer(ob, 0, &vb, &nb) < 0) { PyBuffer_Release(&v0); PyBuffer_Release(&va); return NULL; }
    if (n0 != na || n0 != nb) {
        PyBuffer_Release(&v0); PyBuffer_Release(&va); PyBuffer_Release(&vb);
        PyErr_SetString(PyExc_ValueError, "blocks differ in element count");
        return NULL;
    }
    int64_t used = 0, be = 0, ba = 0, br = 0, sg = 0;
    double dot = 0, ssa = 0, ssb = 0;
    const uint32_t *p0 = v0.buf, *pa = va.buf, *pb = vb.buf;
    Py_ssize_t n = n0;
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t i = 0; i < n; i++) {
        uint32_t u0 = p0[i], ua = pa[i], ub = pb[i];
        int m = (((u0 >> 23) & 0xFFu) != 0xFFu) & (((ua >> 23) & 0xFFu) != 0xFFu) &
                (((ub >> 23) & 0xFFu) != 0xFFu);
        float w = m ? bits2f(u0) : 0.0f;
        float x = m ? bits2f(ua) : 0.0f;
        float y = m ? bits2f(ub) : 0.0f;
        float da = x - w, db = y - w;
        double dda = da, ddb = db;
        dot += dda * ddb; ssa += dda * dda; ssb += ddb * ddb;
        used += m;
        int ce = (x != w) & (y != w);
        be += m & ce;
        float ada = fabsf(da), adb = fabsf(db);
        ba += m & (ada > atol) & (adb > atol);
        float aw = fabsf(w);
        float bx = aw > fabsf(x) ? aw : fabsf(x);
        float by = aw > fabsf(y) ? aw : fabsf(y);
        br += m & (ada > eta * bx) & (adb > eta * by);
        sg += m & ce & ((da > 0) == (db > 0));
    }
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&v0); PyBuffer_Release(&va); PyBuffer_Release(&vb);
    return Py_BuildValue("(LdddLLLL)", (long long)used, dot, ssa, ssb, (long long)be,
                         (long long)ba, (long long)br, (long long)sg);
}

/* widen_bf16(src_uint16_buffer, dst_float32_buffer): exact bf16 -> float32. */
static PyObject *py_widen_bf16(PyObject *self, PyObject *args) {
    PyObject *os, *od;
    if (!PyArg_ParseTuple(args, "OO", &os, &od)) return NULL;
    Py_buffer vs, vd;
    if (PyObject_GetBuffer(os, &vs, PyBUF_C_CONTIGUOUS) < 0) return NULL;
    if (PyObject_GetBuffer(od, &vd, PyBUF_C_CONTIGUOUS | PyBUF_WRITABLE) < 0) { PyBuffer_Release(&vs); return NULL; }
    Py_ssize_t n = vs.len / 2;
    if (vd.len < n * 4) {
        PyBuffer_Release(&vs); PyBuffer_Release(&vd);
        PyErr_SetString(PyExc_ValueError, "destination too small");
        return NULL;
    }
    const uint16_t *s = vs.buf;
    uint32_t *d = vd.buf;
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t i = 0; i < n; i++) d[i] = ((uint32_t)s[i]) << 16;
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&vs); PyBuffer_Release(&vd);
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"stats", py_stats, METH_VARARGS, "Fused per-block statistics of base vs fine-tuned weights."},
    {"pair", py_pair, METH_VARARGS, "Fused per-block statistics of two updates of one base."},
    {"widen_bf16", py_widen_bf16, METH_VARARGS, "Exact bfloat16 -> float32 widening."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_fused", NULL, -1, methods};

PyMODINIT_FUNC PyInit__fused(void) { return PyModule_Create(&module); }
