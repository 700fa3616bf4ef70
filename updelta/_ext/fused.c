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

static inline float bits2f(uint32_t u) { union { uint32_t u; float f; } x; x.u = u; return x.f; }
static inline uint32_t f2bits(float f) { union { uint32_t u; float f; } x; x.f = f; return x.u; }

typedef struct {
    int64_t used, nfa, nfb, eq, at, rt;
    double ss_d, ss_a, dot, sabs, maxd;
} Stats;

#define LOAD_F32(p, i) (((const uint32_t *)(p))[i])
#define LOAD_BF16(p, i) (((uint32_t)((const uint16_t *)(p))[i]) << 16)

/* Chunks of CHUNK elements accumulate in float/int32 lanes (vectorisable), then into
 * double/int64 totals: the float partial sums cover at most CHUNK/lanes terms each.
 * A chunk whose float sums overflow (finite weights above ~1e19 in magnitude: never seen in a
 * trained model, but a damaged file can hold them) is summed again in double, element by element,
 * so an overflow never becomes an infinite norm. The counts never overflow and are kept. */
#define CHUNK 256
#define F_OVERFLOW(x) (!isfinite(x))

/* Body of one element. Finiteness is a test on exponent bits, masking instead of branching;
 * max(|a|,|b|) is an integer max on sign-cleared bits (no fmaxf, which blocks vectorisation). */
#define STATS_ELEM(LA, LB, HIST)                                              \
    {                                                                         \
        uint32_t ua = LA(pa, i), ub = LB(pb, i);                              \
        int32_t fa = ((ua >> 23) & 0xFFu) != 0xFFu;                           \
        int32_t fb = ((ub >> 23) & 0xFFu) != 0xFFu;                           \
        nfa += 1 - fa; nfb += 1 - fb;                                         \
        int32_t m = fa & fb;                                                  \
        uint32_t mm = -(uint32_t)m;                                           \
        float a = bits2f(ua & mm), b = bits2f(ub & mm);                       \
        float d = b - a;                                                      \
        float ad = fabsf(d);                                                  \
        ss_d += d * d; ss_a += a * a; dot += d * a; sabs += ad;               \
        int32_t adb = (int32_t)f2bits(ad);                                    \
        mx = adb > mx ? adb : mx;                                             \
        int32_t ia = (int32_t)(ua & mm & 0x7FFFFFFFu);                        \
        int32_t ib = (int32_t)(ub & mm & 0x7FFFFFFFu);                        \
        float big = bits2f((uint32_t)(ia > ib ? ia : ib));                    \
        used += m;                                                            \
        eq += (a == b) & m;                                                   \
        at += (ad <= atol) & m;                                               \
        rt += (ad <= eta * big) & m;                                          \
        HIST                                                                  \
    }

#define HIST_ON                                                               \
    if (m) {                                                                  \
        if (ad == 0.0f) hist[256]++;                                          \
        else hist[(f2bits(ad) >> 23) & 0xFFu]++;                              \
    }
#define HIST_OFF

#define DEF_STATS(NAME, LA, LB, HIST)                                         \
__attribute__((target_clones("avx2", "default")))                             \
static void NAME(const void *pa, const void *pb, Py_ssize_t n, float atol,    \
                 float eta, int64_t *hist, Stats *s) {                        \
    (void)hist;                                                               \
    for (Py_ssize_t c0 = 0; c0 < n; c0 += CHUNK) {                            \
        Py_ssize_t c1 = c0 + CHUNK < n ? c0 + CHUNK : n;                      \
        int32_t used = 0, nfa = 0, nfb = 0, eq = 0, at = 0, rt = 0, mx = 0;   \
        float ss_d = 0, ss_a = 0, dot = 0, sabs = 0;                          \
        for (Py_ssize_t i = c0; i < c1; i++) STATS_ELEM(LA, LB, HIST)         \
        s->used += used; s->nfa += nfa; s->nfb += nfb; s->eq += eq;           \
        s->at += at; s->rt += rt;                                             \
        if (F_OVERFLOW(ss_d) || F_OVERFLOW(ss_a) || F_OVERFLOW(dot) ||        \
            F_OVERFLOW(sabs) || (uint32_t)mx >= 0x7F800000u) {                \
            double dd_ = 0, da_ = 0, dt_ = 0, ds_ = 0, dm_ = 0;               \
            for (Py_ssize_t i = c0; i < c1; i++) {                            \
                uint32_t ua = LA(pa, i), ub = LB(pb, i);                      \
                if (((ua >> 23) & 0xFFu) == 0xFFu) continue;                  \
                if (((ub >> 23) & 0xFFu) == 0xFFu) continue;                  \
                double a = bits2f(ua), b = bits2f(ub), d = b - a;             \
                dd_ += d * d; da_ += a * a; dt_ += d * a; ds_ += fabs(d);     \
                if (fabs(d) > dm_) dm_ = fabs(d);                             \
            }                                                                 \
            ss_d = 0; ss_a = 0; dot = 0; sabs = 0; mx = 0;                    \
            s->ss_d += dd_; s->ss_a += da_; s->dot += dt_; s->sabs += ds_;    \
            if (dm_ > s->maxd) s->maxd = dm_;                                 \
        }                                                                     \
        s->ss_d += ss_d; s->ss_a += ss_a;                                     \
        s->dot += dot; s->sabs += sabs;                                       \
        if ((double)bits2f((uint32_t)mx) > s->maxd)                           \
            s->maxd = (double)bits2f((uint32_t)mx);                           \
    }                                                                         \
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
    return Py_BuildValue("(LLLdddddLLL)", (long long)s.used, (long long)s.nfa, (long long)s.nfb,
                         s.ss_d, s.ss_a, s.dot, s.sabs, s.maxd,
                         (long long)s.eq, (long long)s.at, (long long)s.rt);
fail:
    PyBuffer_Release(&va);
    PyBuffer_Release(&vb);
    return NULL;
}

typedef struct {
    int64_t used, be, ba, br, sg;
    double dot, ssa, ssb;
} PairStats;

__attribute__((target_clones("avx2", "default")))
static void pair_loop(const uint32_t *p0, const uint32_t *pa, const uint32_t *pb, Py_ssize_t n, float atol,
                      float eta, PairStats *s) {
    for (Py_ssize_t c0 = 0; c0 < n; c0 += CHUNK) {
        Py_ssize_t c1 = c0 + CHUNK < n ? c0 + CHUNK : n;
        int32_t used = 0, be = 0, ba = 0, br = 0, sg = 0;
        float dot = 0, ssa = 0, ssb = 0;
        for (Py_ssize_t i = c0; i < c1; i++) {
            uint32_t u0 = p0[i], ua = pa[i], ub = pb[i];
            int32_t m = (((u0 >> 23) & 0xFFu) != 0xFFu) & (((ua >> 23) & 0xFFu) != 0xFFu) &
                        (((ub >> 23) & 0xFFu) != 0xFFu);
            uint32_t mm = -(uint32_t)m;
            float w = bits2f(u0 & mm), x = bits2f(ua & mm), y = bits2f(ub & mm);
            float da = x - w, db = y - w;
            dot += da * db; ssa += da * da; ssb += db * db;
            used += m;
            int32_t ce = (x != w) & (y != w);
            be += ce;
            float ada = fabsf(da), adb = fabsf(db);
            ba += (ada > atol) & (adb > atol);
            int32_t i0 = (int32_t)(u0 & mm & 0x7FFFFFFFu);
            int32_t ix = (int32_t)(ua & mm & 0x7FFFFFFFu);
            int32_t iy = (int32_t)(ub & mm & 0x7FFFFFFFu);
            float bx = bits2f((uint32_t)(i0 > ix ? i0 : ix));
            float by = bits2f((uint32_t)(i0 > iy ? i0 : iy));
            br += (ada > eta * bx) & (adb > eta * by);
            sg += ce & ((da > 0) == (db > 0));
        }
        s->used += used; s->be += be; s->ba += ba; s->br += br; s->sg += sg;
        if (F_OVERFLOW(dot) || F_OVERFLOW(ssa) || F_OVERFLOW(ssb)) { /* see CHUNK: redo the sums in double */
            double dt_ = 0, sa_ = 0, sb_ = 0;
            for (Py_ssize_t i = c0; i < c1; i++) {
                uint32_t u0 = p0[i], ua = pa[i], ub = pb[i];
                if (((u0 >> 23) & 0xFFu) == 0xFFu || ((ua >> 23) & 0xFFu) == 0xFFu ||
                    ((ub >> 23) & 0xFFu) == 0xFFu) continue;
                double w = bits2f(u0), da = (double)bits2f(ua) - w, db = (double)bits2f(ub) - w;
                dt_ += da * db; sa_ += da * da; sb_ += db * db;
            }
            dot = 0; ssa = 0; ssb = 0;
            s->dot += dt_; s->ssa += sa_; s->ssb += sb_;
        }
        s->dot += dot; s->ssa += ssa; s->ssb += ssb;
    }
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
    PairStats s;
    memset(&s, 0, sizeof s);
    Py_BEGIN_ALLOW_THREADS
    pair_loop(v0.buf, va.buf, vb.buf, n0, atol, eta, &s);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&v0); PyBuffer_Release(&va); PyBuffer_Release(&vb);
    return Py_BuildValue("(LdddLLLL)", (long long)s.used, s.dot, s.ssa, s.ssb, (long long)s.be,
                         (long long)s.ba, (long long)s.br, (long long)s.sg);
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

/* rowcol(a, kind_a, b, kind_b, start, cols, rows_out, cols_out): the row and column energies of one block
 * (docs/metrics.md, Where an update sits). The block holds elements [start, start + n) of a row-major
 * tensor with `cols` columns; e = d * d in double, d = b - a in float32 as in `stats` (again in double when
 * the float difference overflows), pairs with a non-finite value left out. rows_out[r - start / cols] and
 * cols_out[c] (float64, zeroed by the caller) receive the sums of e. */
#define ROWCOL_LOOP(LA, LB)                                                   \
    double et[CHUNK];                                                         \
    for (Py_ssize_t i = 0; i < n;) {                                          \
        Py_ssize_t idx = start + i, c0 = idx % cols;                          \
        Py_ssize_t len = cols - c0 < n - i ? cols - c0 : n - i;               \
        double acc = 0.0;                                                     \
        for (Py_ssize_t j0 = 0; j0 < len; j0 += CHUNK) {                      \
            Py_ssize_t m = len - j0 < CHUNK ? len - j0 : CHUNK;               \
            const Py_ssize_t base = i + j0;                                   \
            double cs = 0.0;                                                  \
            for (Py_ssize_t j = 0; j < m; j++) {                              \
                uint32_t ua = LA(pa, base + j), ub = LB(pb, base + j);        \
                uint32_t mm = -(uint32_t)((((ua >> 23) & 0xFFu) != 0xFFu) &   \
                                          (((ub >> 23) & 0xFFu) != 0xFFu));   \
                double d = (double)(bits2f(ub & mm) - bits2f(ua & mm));       \
                et[j] = d * d;                                                \
                cs += et[j];                                                  \
            }                                                                 \
            if (F_OVERFLOW(cs)) { /* a float32 difference overflowed: in double */ \
                cs = 0.0;                                                     \
                for (Py_ssize_t j = 0; j < m; j++) {                          \
                    uint32_t ua = LA(pa, base + j), ub = LB(pb, base + j);    \
                    uint32_t mm = -(uint32_t)((((ua >> 23) & 0xFFu) != 0xFFu) & \
                                              (((ub >> 23) & 0xFFu) != 0xFFu)); \
                    double d = (double)bits2f(ub & mm) - (double)bits2f(ua & mm); \
                    et[j] = d * d;                                            \
                    cs += et[j];                                              \
                }                                                             \
            }                                                                 \
            double *cp = colp + c0 + j0;                                      \
            for (Py_ssize_t j = 0; j < m; j++) cp[j] += et[j];                \
            acc += cs;                                                        \
        }                                                                     \
        rowp[idx / cols - r0] += acc;                                         \
        i += len;                                                             \
    }

#define DEF_ROWCOL(NAME, LA, LB)                                              \
__attribute__((target_clones("avx2", "default")))                             \
static void NAME(const void *pa, const void *pb, Py_ssize_t n, Py_ssize_t start, Py_ssize_t cols,      \
                 double *rowp, double *colp) {                                \
    Py_ssize_t r0 = start / cols;                                             \
    ROWCOL_LOOP(LA, LB)                                                       \
}
DEF_ROWCOL(rowcol_ff, LOAD_F32, LOAD_F32)
DEF_ROWCOL(rowcol_fb, LOAD_F32, LOAD_BF16)
DEF_ROWCOL(rowcol_bf, LOAD_BF16, LOAD_F32)
DEF_ROWCOL(rowcol_bb, LOAD_BF16, LOAD_BF16)
typedef void (*rowcol_fn)(const void *, const void *, Py_ssize_t, Py_ssize_t, Py_ssize_t, double *, double *);
static rowcol_fn ROWCOL_FNS[2][2] = {{rowcol_ff, rowcol_fb}, {rowcol_bf, rowcol_bb}};

static PyObject *py_rowcol(PyObject *self, PyObject *args) {
    PyObject *oa, *ob, *orow, *ocol;
    int ka, kb;
    Py_ssize_t start, cols;
    if (!PyArg_ParseTuple(args, "OiOinnOO", &oa, &ka, &ob, &kb, &start, &cols, &orow, &ocol)) return NULL;
    Py_buffer va, vb, vr, vc;
    Py_ssize_t na, nb;
    if (get_kind_buffer(oa, ka, &va, &na) < 0) return NULL;
    if (get_kind_buffer(ob, kb, &vb, &nb) < 0) { PyBuffer_Release(&va); return NULL; }
    if (PyObject_GetBuffer(orow, &vr, PyBUF_C_CONTIGUOUS | PyBUF_WRITABLE) < 0) goto fail2;
    if (PyObject_GetBuffer(ocol, &vc, PyBUF_C_CONTIGUOUS | PyBUF_WRITABLE) < 0) { PyBuffer_Release(&vr); goto fail2; }
    if (na != nb || cols < 1 || start < 0 || vc.len != cols * 8 ||
        (na > 0 && vr.len < ((start + na - 1) / cols - start / cols + 1) * 8)) {
        PyErr_SetString(PyExc_ValueError, "rowcol: blocks differ in size or the output arrays do not fit");
        PyBuffer_Release(&vr); PyBuffer_Release(&vc);
        goto fail2;
    }
    Py_BEGIN_ALLOW_THREADS
    ROWCOL_FNS[ka][kb](va.buf, vb.buf, na, start, cols, (double *)vr.buf, (double *)vc.buf);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&vr); PyBuffer_Release(&vc); PyBuffer_Release(&va); PyBuffer_Release(&vb);
    Py_RETURN_NONE;
fail2:
    PyBuffer_Release(&va); PyBuffer_Release(&vb);
    return NULL;
}

/* rowcol_heads(a, kind_a, b, kind_b, atol, eta, start, cols, rows_out, cols_out): as rowcol, for the
 * attention weights whose heads are row or column ranges: rows_out [6, nrows] and cols_out [6, cols]
 * (float64, zeroed) receive per row and per column the sums of d^2, a^2 and the counts of finite pairs,
 * a == b, |d| <= atol and |d| <= eta * max(|a|, |b|) (the cheap sums of `stats`, docs/metrics.md). */
#define HEADS_LOOP(LA, LB)                                                    \
    for (Py_ssize_t i = 0; i < n;) {                                          \
        Py_ssize_t idx = start + i, c0 = idx % cols;                          \
        Py_ssize_t len = cols - c0 < n - i ? cols - c0 : n - i;               \
        double acc[6] = {0, 0, 0, 0, 0, 0};                                   \
        for (Py_ssize_t j = 0; j < len; j++) {                                \
            uint32_t ua = LA(pa, i + j), ub = LB(pb, i + j);                  \
            int32_t m = (((ua >> 23) & 0xFFu) != 0xFFu) & (((ub >> 23) & 0xFFu) != 0xFFu); \
            uint32_t mm = -(uint32_t)m;                                       \
            float a = bits2f(ua & mm), b = bits2f(ub & mm);                   \
            float d = b - a, ad = fabsf(d);                                   \
            double dd = isfinite(d) ? (double)d : (double)b - (double)a;      \
            int32_t ia = (int32_t)(ua & mm & 0x7FFFFFFFu), ib = (int32_t)(ub & mm & 0x7FFFFFFFu); \
            float big = bits2f((uint32_t)(ia > ib ? ia : ib));                \
            double v[6] = {dd * dd, (double)a * (double)a, (double)m, (double)((a == b) & m), \
                           (double)((ad <= atol) & m), (double)((ad <= eta * big) & m)}; \
            for (int k = 0; k < 6; k++) { acc[k] += v[k]; colp[k * cols + c0 + j] += v[k]; } \
        }                                                                     \
        for (int k = 0; k < 6; k++) rowp[k * nrows + idx / cols - r0] += acc[k]; \
        i += len;                                                             \
    }

#define DEF_HEADS(NAME, LA, LB)                                               \
static void NAME(const void *pa, const void *pb, Py_ssize_t n, float atol, float eta, Py_ssize_t start, \
                 Py_ssize_t cols, Py_ssize_t nrows, double *rowp, double *colp) {                      \
    Py_ssize_t r0 = start / cols;                                             \
    HEADS_LOOP(LA, LB)                                                        \
}
DEF_HEADS(heads_ff, LOAD_F32, LOAD_F32)
DEF_HEADS(heads_fb, LOAD_F32, LOAD_BF16)
DEF_HEADS(heads_bf, LOAD_BF16, LOAD_F32)
DEF_HEADS(heads_bb, LOAD_BF16, LOAD_BF16)
typedef void (*heads_fn)(const void *, const void *, Py_ssize_t, float, float, Py_ssize_t, Py_ssize_t, Py_ssize_t,
                         double *, double *);
static heads_fn HEADS_FNS[2][2] = {{heads_ff, heads_fb}, {heads_bf, heads_bb}};

static PyObject *py_rowcol_heads(PyObject *self, PyObject *args) {
    PyObject *oa, *ob, *orow, *ocol;
    int ka, kb;
    float atol, eta;
    Py_ssize_t start, cols;
    if (!PyArg_ParseTuple(args, "OiOiffnnOO", &oa, &ka, &ob, &kb, &atol, &eta, &start, &cols, &orow, &ocol))
        return NULL;
    Py_buffer va, vb, vr, vc;
    Py_ssize_t na, nb;
    if (get_kind_buffer(oa, ka, &va, &na) < 0) return NULL;
    if (get_kind_buffer(ob, kb, &vb, &nb) < 0) { PyBuffer_Release(&va); return NULL; }
    if (PyObject_GetBuffer(orow, &vr, PyBUF_C_CONTIGUOUS | PyBUF_WRITABLE) < 0) goto fail3;
    if (PyObject_GetBuffer(ocol, &vc, PyBUF_C_CONTIGUOUS | PyBUF_WRITABLE) < 0) { PyBuffer_Release(&vr); goto fail3; }
    Py_ssize_t nrows = na > 0 && cols > 0 ? (start + na - 1) / cols - start / cols + 1 : 0;
    if (na != nb || cols < 1 || start < 0 || vc.len != 6 * cols * 8 || vr.len != 6 * nrows * 8) {
        PyErr_SetString(PyExc_ValueError, "rowcol_heads: blocks differ in size or the output arrays do not fit");
        PyBuffer_Release(&vr); PyBuffer_Release(&vc);
        goto fail3;
    }
    Py_BEGIN_ALLOW_THREADS
    HEADS_FNS[ka][kb](va.buf, vb.buf, na, atol, eta, start, cols, nrows, (double *)vr.buf, (double *)vc.buf);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&vr); PyBuffer_Release(&vc); PyBuffer_Release(&va); PyBuffer_Release(&vb);
    Py_RETURN_NONE;
fail3:
    PyBuffer_Release(&va); PyBuffer_Release(&vb);
    return NULL;
}

static PyMethodDef methods[] = {
    {"stats", py_stats, METH_VARARGS, "Fused per-block statistics of base vs fine-tuned weights."},
    {"pair", py_pair, METH_VARARGS, "Fused per-block statistics of two updates of one base."},
    {"widen_bf16", py_widen_bf16, METH_VARARGS, "Exact bfloat16 -> float32 widening."},
    {"rowcol", py_rowcol, METH_VARARGS, "Row and column energies of one block of an update."},
    {"rowcol_heads", py_rowcol_heads, METH_VARARGS, "Per-row and per-column cheap sums of one block."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_fused", NULL, -1, methods};

PyMODINIT_FUNC PyInit__fused(void) { return PyModule_Create(&module); }
