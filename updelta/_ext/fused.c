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
 * The loops are written branch-free so the compiler can vectorise them, compiled for three SIMD paths chosen
 * at import; the GIL is released while they run so two Python threads can use two cores. docs/kernel.md
 * describes the loops, what is exact and what depends on the summation order, and their cost.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>
#include <math.h>
#include <stdlib.h>

static inline float bits2f(uint32_t u) { union { uint32_t u; float f; } x; x.u = u; return x.f; }
static inline uint32_t f2bits(float f) { union { uint32_t u; float f; } x; x.f = f; return x.u; }

/* Each loop is compiled three times from one body: portable (the compiler's baseline: SSE2 on x86-64), AVX2+FMA
 * and AVX-512, and `simd_level` (chosen once at import from the CPU, capped by the environment variable
 * UPDELTA_KERNEL_SIMD=portable|avx2|avx512 or by the module function `simd(name)`) picks one per call. No
 * -march flag: the installed module runs on any x86-64 (and builds elsewhere with the portable body only).
 * The three give the same counts and maximum bit for bit; their float sums differ by summation order only. */
#if defined(__GNUC__) && defined(__x86_64__)
#define UPD_X86 1
#define T_AVX2 __attribute__((target("avx2,fma")))
#define T_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma")))
#else
#define T_AVX2
#define T_AVX512
#endif
static int simd_level = 0; /* 0 portable, 1 avx2, 2 avx512 */
static const char *SIMD_NAMES[3] = {"portable", "avx2", "avx512"};
#define PICK3(NAME, ARGS)                                                     \
    do {                                                                      \
        if (simd_level == 2) NAME##_a5 ARGS;                                  \
        else if (simd_level == 1) NAME##_a2 ARGS;                             \
        else NAME##_p ARGS;                                                   \
    } while (0)

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
#define STATS_ELEM(LA, LB, HIST_UNUSED, EXTRA)                                       \
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
        EXTRA                                                                 \
    }

/* The exponent histogram (opt-in) is a second pass over the chunk, after its sums: the sums' loop is then the same
 * with the histogram on or off (and in `stats`, `stats_rowcol`, `stats_heads`), so the histogram never changes a
 * sum. |d| is the same float32 difference as in the sums. */
#define HIST_ON(LA, LB)                                                       \
    for (Py_ssize_t i = c0; i < c1; i++) {                                    \
        uint32_t ua = LA(pa, i), ub = LB(pb, i);                              \
        if (((ua >> 23) & 0xFFu) == 0xFFu || ((ub >> 23) & 0xFFu) == 0xFFu) continue; \
        float ad = fabsf(bits2f(ub) - bits2f(ua));                            \
        if (ad == 0.0f) hist[256]++;                                          \
        else hist[(f2bits(ad) >> 23) & 0xFFu]++;                              \
    }
#define HIST_OFF(LA, LB)

/* Elements [c0, c1) of the block (one chunk) into *s; EXTRA runs per element with `d` in scope. */
#define STATS_CHUNK(LA, LB, HIST_UNUSED, EXTRA)                                      \
    {                                                                         \
        int32_t used = 0, nfa = 0, nfb = 0, eq = 0, at = 0, rt = 0, mx = 0;   \
        float ss_d = 0, ss_a = 0, dot = 0, sabs = 0;                          \
        for (Py_ssize_t i = c0; i < c1; i++) STATS_ELEM(LA, LB, , EXTRA)  \
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
    }

/* The fast chunk: the same sums when every value of the chunk is finite (all but damaged files), without the
 * masks. A NaN or Inf in `a` makes `ss_a` (a sum of a * a) NaN or Inf, one in `b` (with `a` finite) makes `d`
 * and so `ss_d` NaN or Inf: a chunk whose float sums are not all finite (a non-finite value, or finite values
 * whose float32 sums overflowed) is done again by STATS_CHUNK (the masked loop above, with its float64 redo),
 * which then gives every sum and count of the chunk. So the counts, `used` (the whole chunk) and the maximum
 * are those of STATS_CHUNK bit for bit; only the float sums' order differs. `m` is 1 for the EXTRA terms
 * (KEEP_HEAD_TERMS). */
#define FAST_ELEM(UA, UB, EXTRA)                                              \
    {                                                                         \
        uint32_t ua = (UA), ub = (UB);                                        \
        uint32_t ia = ua & 0x7FFFFFFFu, ib = ub & 0x7FFFFFFFu;                \
        float a = bits2f(ua), b = bits2f(ub);                                 \
        float d = b - a;                                                      \
        float ad = fabsf(d);                                                  \
        ss_d += d * d; ss_a += a * a; dot += (double)d * a; sabs += ad;       \
        uint32_t adb = f2bits(ad);                                            \
        mx = adb > mx ? adb : mx;                                             \
        uint32_t ibig = ia > ib ? ia : ib;                                    \
        float big = bits2f(ibig);                                             \
        const int32_t m = 1; (void)m;                                         \
        eq += a == b; at += ad <= atol; rt += ad <= eta * big;                \
        EXTRA                                                                 \
    }

#define FAST_COMMIT(LA, LB, EXTRA)                                            \
    if (mx >= 0x7F800000u || F_OVERFLOW(ss_d) ||                              \
        F_OVERFLOW(ss_a) || F_OVERFLOW(dot) || F_OVERFLOW(sabs))              \
        STATS_CHUNK(LA, LB, HIST_OFF, EXTRA)                                  \
    else {                                                                    \
        s->used += c1 - c0; s->eq += eq; s->at += at; s->rt += rt;            \
        s->ss_d += ss_d; s->ss_a += ss_a; s->dot += dot; s->sabs += sabs;     \
        if ((double)bits2f(mx) > s->maxd) s->maxd = (double)bits2f(mx);       \
        masked = 0;                                                           \
    }

#define FAST_CHUNK(LA, LB, HIST, EXTRA)                                       \
    {                                                                         \
        int32_t eq = 0, at = 0, rt = 0;                                       \
        uint32_t mx = 0;                                              \
        float ss_d = 0, ss_a = 0, sabs = 0; double dot = 0;                 \
        for (Py_ssize_t i = c0; i < c1; i++) FAST_ELEM(LA(pa, i), LB(pb, i), EXTRA) \
        FAST_COMMIT(LA, LB, EXTRA)                                            \
    }

/* Two bf16 blocks: one 32-bit load gives two elements (low half << 16, high half masked: elements 2k and 2k + 1
 * on a little-endian machine), so decoding is one operation per element. c0 is even. `stats`, `stats_rowcol` and
 * `stats_heads` all use it on bf16 pairs, so their sums agree bit for bit (tests/metrics/test_kernel_simd.py). */
static inline uint32_t load_u32(const void *p, Py_ssize_t k) {
    uint32_t w;
    memcpy(&w, (const char *)p + 4 * k, 4);
    return w;
}
#define FAST_CHUNK_BB(LA, LB, HIST, EXTRA)                                    \
    {                                                                         \
        int32_t eq = 0, at = 0, rt = 0;                                       \
        uint32_t mx = 0;                                              \
        float ss_d = 0, ss_a = 0, sabs = 0; double dot = 0;                 \
        for (Py_ssize_t k = c0 / 2; k < c1 / 2; k++) {                        \
            uint32_t wa = load_u32(pa, k), wb = load_u32(pb, k);              \
            { Py_ssize_t i = 2 * k; (void)i; FAST_ELEM(wa << 16, wb << 16, EXTRA) }    \
            { Py_ssize_t i = 2 * k + 1; (void)i;                                     \
              FAST_ELEM(wa & 0xFFFF0000u, wb & 0xFFFF0000u, EXTRA) }          \
        }                                                                     \
        if ((c1 - c0) & 1) { Py_ssize_t i = c1 - 1; FAST_ELEM(LA(pa, i), LB(pb, i), EXTRA) } \
        FAST_COMMIT(LA, LB, EXTRA)                                            \
    }

#define DEF_STATS_AT(NAME, ATTR, LA, LB, HIST, CHUNKF)                       \
ATTR static void NAME(const void *pa, const void *pb, Py_ssize_t n, float atol, \
                      float eta, int64_t *hist, Stats *s) {                   \
    (void)hist;                                                               \
    for (Py_ssize_t c0 = 0; c0 < n; c0 += CHUNK) {                            \
        Py_ssize_t c1 = c0 + CHUNK < n ? c0 + CHUNK : n;                      \
        int masked = 1; /* 0 once FAST_COMMIT kept the fast chunk */          \
        CHUNKF(LA, LB, HIST, ) HIST(LA, LB)                                   \
        (void)masked;                                                         \
    }                                                                         \
}
#define DEF_STATS(NAME, LA, LB, HIST, CHUNKF)                                 \
DEF_STATS_AT(NAME##_p, , LA, LB, HIST, CHUNKF)                                \
DEF_STATS_AT(NAME##_a2, T_AVX2, LA, LB, HIST, CHUNKF)                         \
DEF_STATS_AT(NAME##_a5, T_AVX512, LA, LB, HIST, CHUNKF)                       \
static void NAME(const void *pa, const void *pb, Py_ssize_t n, float atol,    \
                 float eta, int64_t *hist, Stats *s) {                        \
    PICK3(NAME, (pa, pb, n, atol, eta, hist, s));                             \
}

DEF_STATS(stats_ff, LOAD_F32, LOAD_F32, HIST_OFF, FAST_CHUNK)
DEF_STATS(stats_fb, LOAD_F32, LOAD_BF16, HIST_OFF, FAST_CHUNK)
DEF_STATS(stats_bf, LOAD_BF16, LOAD_F32, HIST_OFF, FAST_CHUNK)
DEF_STATS(stats_bb, LOAD_BF16, LOAD_BF16, HIST_OFF, FAST_CHUNK_BB)
DEF_STATS(stats_ff_h, LOAD_F32, LOAD_F32, HIST_ON, FAST_CHUNK)
DEF_STATS(stats_fb_h, LOAD_F32, LOAD_BF16, HIST_ON, FAST_CHUNK)
DEF_STATS(stats_bf_h, LOAD_BF16, LOAD_F32, HIST_ON, FAST_CHUNK)
DEF_STATS(stats_bb_h, LOAD_BF16, LOAD_BF16, HIST_ON, FAST_CHUNK_BB)

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

static PyObject *stats_tuple(const Stats *s) {
    return Py_BuildValue("(LLLdddddLLL)", (long long)s->used, (long long)s->nfa, (long long)s->nfb,
                         s->ss_d, s->ss_a, s->dot, s->sabs, s->maxd,
                         (long long)s->eq, (long long)s->at, (long long)s->rt);
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
    return stats_tuple(&s);
fail:
    PyBuffer_Release(&va);
    PyBuffer_Release(&vb);
    return NULL;
}

typedef struct {
    int64_t used, be, ba, br, sg;
    double dot, ssa, ssb;
} PairStats;

/* One body, inlined into the three SIMD variants below (a default-target body inlines into a wider target). */
static inline __attribute__((always_inline)) void pair_body(const uint32_t *p0, const uint32_t *pa,
                                                            const uint32_t *pb, Py_ssize_t n, float atol,
                                                            float eta, PairStats *s) {
    for (Py_ssize_t c0 = 0; c0 < n; c0 += CHUNK) {
        Py_ssize_t c1 = c0 + CHUNK < n ? c0 + CHUNK : n;
        { /* the fast chunk (as FAST_CHUNK): no masks; a NaN/Inf in the base, in a or in b makes ssa or ssb
           * non-finite, and so does an overflow: such a chunk goes to the masked loop below */
            int32_t be = 0, ba = 0, br = 0, sg = 0;
            float ssa = 0, ssb = 0;
            double dot = 0; /* products of two updates cancel (cosines near 0): summed in double */
            for (Py_ssize_t i = c0; i < c1; i++) {
                uint32_t u0 = p0[i], ua = pa[i], ub = pb[i];
                float w = bits2f(u0), x = bits2f(ua), y = bits2f(ub);
                float da = x - w, db = y - w;
                dot += (double)da * db; ssa += da * da; ssb += db * db;
                int32_t ce = (x != w) & (y != w);
                be += ce;
                float ada = fabsf(da), adb = fabsf(db);
                ba += (ada > atol) & (adb > atol);
                uint32_t i0 = u0 & 0x7FFFFFFFu, ix = ua & 0x7FFFFFFFu, iy = ub & 0x7FFFFFFFu;
                float bx = bits2f(i0 > ix ? i0 : ix), by = bits2f(i0 > iy ? i0 : iy);
                br += (ada > eta * bx) & (adb > eta * by);
                sg += ce & ((da > 0) == (db > 0));
            }
            if (!F_OVERFLOW(dot) && !F_OVERFLOW(ssa) && !F_OVERFLOW(ssb)) {
                s->used += c1 - c0; s->be += be; s->ba += ba; s->br += br; s->sg += sg;
                s->dot += dot; s->ssa += ssa; s->ssb += ssb;
                continue;
            }
        }
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

#define PAIR_AT(NAME, ATTR)                                                   \
ATTR static void NAME(const uint32_t *p0, const uint32_t *pa, const uint32_t *pb, Py_ssize_t n, float atol, \
                      float eta, PairStats *s) {                              \
    pair_body(p0, pa, pb, n, atol, eta, s);                                   \
}
PAIR_AT(pair_loop_p, )
PAIR_AT(pair_loop_a2, T_AVX2)
PAIR_AT(pair_loop_a5, T_AVX512)

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
    PICK3(pair_loop, (v0.buf, va.buf, vb.buf, n0, atol, eta, &s));
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

/* After STATS_CHUNK has kept each element's float32 difference in dt[0..m): `wide` says whether one of them
 * overflowed (|b - a| beyond float range: only damaged files); then et[0..m) receives the chunk's energies from
 * differences taken in double, pairs with a non-finite value counted as 0. */
#define WIDE_ENERGIES(LA, LB)                                                 \
    int wide;                                                                 \
    {                                                                         \
        uint32_t big_ = 0; /* a kept fast chunk has no overflowed difference */ \
        for (Py_ssize_t j = 0; j < (masked ? m : 0); j++) {                   \
            uint32_t u = f2bits(dt[j]) & 0x7FFFFFFFu;                         \
            big_ = u > big_ ? u : big_;                                       \
        }                                                                     \
        wide = big_ >= 0x7F800000u;                                           \
        if (wide) {                                                           \
            for (Py_ssize_t j = 0; j < m; j++) {                              \
                uint32_t ua = LA(pa, c0 + j), ub = LB(pb, c0 + j);            \
                uint32_t mm = -(uint32_t)((((ua >> 23) & 0xFFu) != 0xFFu) &   \
                                          (((ub >> 23) & 0xFFu) != 0xFFu));   \
                double d = (double)bits2f(ub & mm) - (double)bits2f(ua & mm); \
                et[j] = d * d;                                                \
            }                                                                 \
        }                                                                     \
    }

/* stats_rowcol(a, kind_a, b, kind_b, atol, eta, hist_or_None, start, cols, rows_out, cols_out) -> tuple:
 * `stats` and the row and column energies of one block (docs/metrics.md, Where an update sits) in one pass,
 * each element read and decoded once. The stats sums are those of `stats` bit for bit (the same chunks, the
 * same loop). The block holds elements [start, start + n) of a row-major tensor with `cols` columns; the
 * energy of an element is e = d * d in double, d = b - a in float32 as in `stats` (a chunk whose float
 * difference overflowed again in double), pairs with a non-finite value left out; rows_out[r - start / cols]
 * and cols_out[c] (float64, zeroed by the caller) receive the sums of e (the torch reference:
 * updelta/metrics/concentration.py, `block`). */
#define KEEP_D { dt[i - c0] = d; }

#define DEF_STATS_ROWCOL_AT(NAME, ATTR, LA, LB, HIST, CHUNKF)                                  \
ATTR static void NAME(const void *pa, const void *pb, Py_ssize_t n, float atol,    \
                 float eta, int64_t *hist, Stats *s, Py_ssize_t start,        \
                 Py_ssize_t cols, double *rowp, double *colp) {               \
    (void)hist;                                                               \
    float dt[CHUNK];                                                          \
    double et[CHUNK];                                                         \
    Py_ssize_t ri = 0, cc = start % cols;  /* row (from the block's first) and column of element c0 */ \
    double racc = 0.0;                                                        \
    for (Py_ssize_t c0 = 0; c0 < n; c0 += CHUNK) {                            \
        Py_ssize_t c1 = c0 + CHUNK < n ? c0 + CHUNK : n, m = c1 - c0;         \
        int masked = 1;                                                       \
        CHUNKF(LA, LB, HIST, KEEP_D) HIST(LA, LB)                        \
        WIDE_ENERGIES(LA, LB)                                                 \
        for (Py_ssize_t j = 0; j < m;) {                                      \
            Py_ssize_t len = cols - cc < m - j ? cols - cc : m - j;           \
            double *cp = colp + cc, acc = 0.0;                                \
            if (wide) {                                                       \
                for (Py_ssize_t k = 0; k < len; k++) { cp[k] += et[j + k]; acc += et[j + k]; } \
            } else {                                                          \
                const float *q = dt + j;                                      \
                for (Py_ssize_t k = 0; k < len; k++) {                        \
                    double e = (double)q[k] * (double)q[k];                   \
                    cp[k] += e; acc += e;                                     \
                }                                                             \
            }                                                                 \
            racc += acc; j += len; cc += len;                                 \
            if (cc == cols) { rowp[ri++] += racc; racc = 0.0; cc = 0; }       \
        }                                                                     \
    }                                                                         \
    if (cc != 0) rowp[ri] += racc;                                            \
}
#define DEF_STATS_ROWCOL(NAME, LA, LB, HIST, CHUNKF)                                 \
DEF_STATS_ROWCOL_AT(NAME##_p, , LA, LB, HIST, CHUNKF)                                \
DEF_STATS_ROWCOL_AT(NAME##_a2, T_AVX2, LA, LB, HIST, CHUNKF)                         \
DEF_STATS_ROWCOL_AT(NAME##_a5, T_AVX512, LA, LB, HIST, CHUNKF)                       \
static void NAME(const void *pa, const void *pb, Py_ssize_t n, float atol,    \
                 float eta, int64_t *hist, Stats *s, Py_ssize_t start,        \
                 Py_ssize_t cols, double *rowp, double *colp) {                                                   \
    PICK3(NAME, (pa, pb, n, atol, eta, hist, s, start, cols, rowp, colp));                                                   \
}
DEF_STATS_ROWCOL(sr_ff, LOAD_F32, LOAD_F32, HIST_OFF, FAST_CHUNK)
DEF_STATS_ROWCOL(sr_fb, LOAD_F32, LOAD_BF16, HIST_OFF, FAST_CHUNK)
DEF_STATS_ROWCOL(sr_bf, LOAD_BF16, LOAD_F32, HIST_OFF, FAST_CHUNK)
DEF_STATS_ROWCOL(sr_bb, LOAD_BF16, LOAD_BF16, HIST_OFF, FAST_CHUNK_BB)
DEF_STATS_ROWCOL(sr_ff_h, LOAD_F32, LOAD_F32, HIST_ON, FAST_CHUNK)
DEF_STATS_ROWCOL(sr_fb_h, LOAD_F32, LOAD_BF16, HIST_ON, FAST_CHUNK)
DEF_STATS_ROWCOL(sr_bf_h, LOAD_BF16, LOAD_F32, HIST_ON, FAST_CHUNK)
DEF_STATS_ROWCOL(sr_bb_h, LOAD_BF16, LOAD_BF16, HIST_ON, FAST_CHUNK_BB)
typedef void (*sr_fn)(const void *, const void *, Py_ssize_t, float, float, int64_t *, Stats *, Py_ssize_t,
                      Py_ssize_t, double *, double *);
static sr_fn SR_FNS[2][2][2] = {
    {{sr_ff, sr_ff_h}, {sr_fb, sr_fb_h}},
    {{sr_bf, sr_bf_h}, {sr_bb, sr_bb_h}},
};

/* The buffers of a fused call: a, b (storage of kinds ka, kb, equal element counts), the optional histogram
 * (writable int64[257]) and the two writable float64 outputs. Returns 0, or -1 with the error set and every
 * buffer released. */
typedef struct {
    Py_buffer a, b, h, r, c;
    Py_ssize_t n;
    int has_hist;
} FusedIO;

static void release_io(FusedIO *io) {
    if (io->has_hist) PyBuffer_Release(&io->h);
    PyBuffer_Release(&io->c); PyBuffer_Release(&io->r); PyBuffer_Release(&io->b); PyBuffer_Release(&io->a);
}

static int acquire_io(PyObject *oa, int ka, PyObject *ob, int kb, PyObject *oh, PyObject *orow, PyObject *ocol,
                      FusedIO *io) {
    Py_ssize_t nb;
    io->has_hist = oh != Py_None;
    if (get_kind_buffer(oa, ka, &io->a, &io->n) < 0) return -1;
    if (get_kind_buffer(ob, kb, &io->b, &nb) < 0) { PyBuffer_Release(&io->a); return -1; }
    if (PyObject_GetBuffer(orow, &io->r, PyBUF_C_CONTIGUOUS | PyBUF_WRITABLE) < 0) goto f2;
    if (PyObject_GetBuffer(ocol, &io->c, PyBUF_C_CONTIGUOUS | PyBUF_WRITABLE) < 0) goto f3;
    if (io->has_hist && PyObject_GetBuffer(oh, &io->h, PyBUF_C_CONTIGUOUS | PyBUF_WRITABLE) < 0) goto f4;
    if (io->has_hist && io->h.len != 257 * 8) {
        PyErr_SetString(PyExc_ValueError, "hist must be a writable int64 array of length 257");
        release_io(io);
        return -1;
    }
    if (io->n != nb) {
        PyErr_SetString(PyExc_ValueError, "blocks differ in element count");
        release_io(io);
        return -1;
    }
    return 0;
f4: PyBuffer_Release(&io->c);
f3: PyBuffer_Release(&io->r);
f2: PyBuffer_Release(&io->b); PyBuffer_Release(&io->a);
    return -1;
}

static PyObject *py_stats_rowcol(PyObject *self, PyObject *args) {
    PyObject *oa, *ob, *oh, *orow, *ocol;
    int ka, kb;
    float atol, eta;
    Py_ssize_t start, cols;
    FusedIO io;
    if (!PyArg_ParseTuple(args, "OiOiffOnnOO", &oa, &ka, &ob, &kb, &atol, &eta, &oh, &start, &cols, &orow, &ocol))
        return NULL;
    if (acquire_io(oa, ka, ob, kb, oh, orow, ocol, &io) < 0) return NULL;
    Py_ssize_t na = io.n;
    if (cols < 1 || start < 0 || io.c.len != cols * 8 ||
        (na > 0 && io.r.len < ((start + na - 1) / cols - start / cols + 1) * 8)) {
        PyErr_SetString(PyExc_ValueError, "stats_rowcol: the output arrays do not fit the block");
        release_io(&io);
        return NULL;
    }
    Stats s;
    memset(&s, 0, sizeof s);
    Py_BEGIN_ALLOW_THREADS
    SR_FNS[ka][kb][io.has_hist](io.a.buf, io.b.buf, na, atol, eta, io.has_hist ? (int64_t *)io.h.buf : NULL, &s,
                                start, cols, (double *)io.r.buf, (double *)io.c.buf);
    Py_END_ALLOW_THREADS
    release_io(&io);
    return stats_tuple(&s);
}

/* stats_heads(a, kind_a, b, kind_b, atol, eta, hist_or_None, start, cols, axis, rows_out, cols_out) -> tuple:
 * as stats_rowcol, for a tensor whose heads are row (axis 0) or column (axis 1) ranges: the head sums (the
 * cheap sums of `stats` per row or column) in the same pass. rows_out [6, nrows] and cols_out [6, cols] (float64, zeroed): index 0 (the energies) on
 * both axes, indices 1-5 (a^2 and the counts of finite pairs, a == b, |d| <= atol, |d| <= eta max(|a|, |b|)) on
 * the head axis only. The stats sums are those of `stats` bit for bit. */
#define KEEP_HEAD_TERMS                                                       \
    { dt[i - c0] = d; av[i - c0] = a;                                         \
      fl[i - c0] = (uint64_t)m | ((uint64_t)((a == b) & m) << 16) | ((uint64_t)((ad <= atol) & m) << 32) | \
                   ((uint64_t)((ad <= eta * big) & m) << 48); }

/* The four flags of an element packed in 16-bit fields of one uint64 (finite, a == b, atol, rtol): a sum of at
 * most 65535 of them adds each field apart. Field k of a packed sum: */
#define FIELD(x, k) ((double)(((x) >> (16 * (k))) & 0xFFFFu))

/* Adds the packed flag sums pk[0..cols) into cols_out rows 2-5 and clears them. */
#define HEADS_FLUSH                                                           \
    for (Py_ssize_t c = 0; c < cols; c++) {                                   \
        for (int k = 0; k < 4; k++) colp[(2 + k) * cols + c] += FIELD(pk[c], k); \
        pk[c] = 0;                                                            \
    }

#define DEF_STATS_HEADS_AT(NAME, ATTR, LA, LB, HIST, CHUNKF)                                   \
ATTR static void NAME(const void *pa, const void *pb, Py_ssize_t n, float atol,    \
                 float eta, int64_t *hist, Stats *s, Py_ssize_t start,        \
                 Py_ssize_t cols, int axis, Py_ssize_t nrows, double *rowp, double *colp, \
                 uint64_t *pk) {                                              \
    (void)hist;                                                               \
    float dt[CHUNK], av[CHUNK];                                               \
    double et[CHUNK];                                                         \
    uint64_t fl[CHUNK];                                                       \
    Py_ssize_t since = 0; /* axis 1: full rows added into pk since its last flush into colp */ \
    Py_ssize_t ri = 0, cc = start % cols;                                     \
    double racc[6] = {0, 0, 0, 0, 0, 0};                                      \
    for (Py_ssize_t c0 = 0; c0 < n; c0 += CHUNK) {                            \
        Py_ssize_t c1 = c0 + CHUNK < n ? c0 + CHUNK : n, m = c1 - c0;         \
        int masked = 1;                                                       \
        CHUNKF(LA, LB, HIST, KEEP_HEAD_TERMS) HIST(LA, LB)               \
        WIDE_ENERGIES(LA, LB)                                                 \
        if (!wide)                                                            \
            for (Py_ssize_t j = 0; j < m; j++) et[j] = (double)dt[j] * (double)dt[j]; \
        for (Py_ssize_t j = 0; j < m;) {                                      \
            Py_ssize_t len = cols - cc < m - j ? cols - cc : m - j;           \
            const double *e = et + j;                                         \
            const float *q = av + j;                                          \
            const uint64_t *f = fl + j;                                       \
            if (axis == 0) {                                                  \
                double *cp = colp + cc, s0 = 0, s1 = 0;                       \
                uint64_t nf = 0; /* len <= CHUNK < 65536 */                   \
                for (Py_ssize_t k = 0; k < len; k++) {                        \
                    cp[k] += e[k]; s0 += e[k]; s1 += (double)q[k] * (double)q[k]; \
                    nf += f[k];                                               \
                }                                                             \
                racc[0] += s0; racc[1] += s1;                                 \
                for (int k = 0; k < 4; k++) racc[2 + k] += FIELD(nf, k);      \
            } else {                                                          \
                double *c0p = colp + cc, *c1p = c0p + cols, s0 = 0;           \
                uint64_t *pp = pk + cc;                                       \
                for (Py_ssize_t k = 0; k < len; k++) {                        \
                    c0p[k] += e[k]; c1p[k] += (double)q[k] * (double)q[k]; s0 += e[k]; \
                    pp[k] += f[k];                                            \
                }                                                             \
                racc[0] += s0;                                                \
            }                                                                 \
            j += len; cc += len;                                              \
            if (cc == cols) {                                                 \
                for (int k = 0; k < 6; k++) { rowp[k * nrows + ri] += racc[k]; racc[k] = 0; } \
                ri++; cc = 0;                                                 \
                if (axis == 1 && ++since == 65535) { HEADS_FLUSH; since = 0; } \
            }                                                                 \
        }                                                                     \
    }                                                                         \
    if (cc != 0)                                                              \
        for (int k = 0; k < 6; k++) rowp[k * nrows + ri] += racc[k];          \
    if (axis == 1) HEADS_FLUSH;                                               \
}
#define DEF_STATS_HEADS(NAME, LA, LB, HIST, CHUNKF)                                 \
DEF_STATS_HEADS_AT(NAME##_p, , LA, LB, HIST, CHUNKF)                                \
DEF_STATS_HEADS_AT(NAME##_a2, T_AVX2, LA, LB, HIST, CHUNKF)                         \
DEF_STATS_HEADS_AT(NAME##_a5, T_AVX512, LA, LB, HIST, CHUNKF)                       \
static void NAME(const void *pa, const void *pb, Py_ssize_t n, float atol,    \
                 float eta, int64_t *hist, Stats *s, Py_ssize_t start,        \
                 Py_ssize_t cols, int axis, Py_ssize_t nrows, double *rowp, double *colp, uint64_t *pk) { \
    PICK3(NAME, (pa, pb, n, atol, eta, hist, s, start, cols, axis, nrows, rowp, colp, pk)); \
}
DEF_STATS_HEADS(sh_ff, LOAD_F32, LOAD_F32, HIST_OFF, FAST_CHUNK)
DEF_STATS_HEADS(sh_fb, LOAD_F32, LOAD_BF16, HIST_OFF, FAST_CHUNK)
DEF_STATS_HEADS(sh_bf, LOAD_BF16, LOAD_F32, HIST_OFF, FAST_CHUNK)
DEF_STATS_HEADS(sh_bb, LOAD_BF16, LOAD_BF16, HIST_OFF, FAST_CHUNK_BB)
DEF_STATS_HEADS(sh_ff_h, LOAD_F32, LOAD_F32, HIST_ON, FAST_CHUNK)
DEF_STATS_HEADS(sh_fb_h, LOAD_F32, LOAD_BF16, HIST_ON, FAST_CHUNK)
DEF_STATS_HEADS(sh_bf_h, LOAD_BF16, LOAD_F32, HIST_ON, FAST_CHUNK)
DEF_STATS_HEADS(sh_bb_h, LOAD_BF16, LOAD_BF16, HIST_ON, FAST_CHUNK_BB)
typedef void (*sh_fn)(const void *, const void *, Py_ssize_t, float, float, int64_t *, Stats *, Py_ssize_t,
                      Py_ssize_t, int, Py_ssize_t, double *, double *, uint64_t *);
static sh_fn SH_FNS[2][2][2] = {
    {{sh_ff, sh_ff_h}, {sh_fb, sh_fb_h}},
    {{sh_bf, sh_bf_h}, {sh_bb, sh_bb_h}},
};

static PyObject *py_stats_heads(PyObject *self, PyObject *args) {
    PyObject *oa, *ob, *oh, *orow, *ocol;
    int ka, kb, axis;
    float atol, eta;
    Py_ssize_t start, cols;
    FusedIO io;
    if (!PyArg_ParseTuple(args, "OiOiffOnniOO", &oa, &ka, &ob, &kb, &atol, &eta, &oh, &start, &cols, &axis,
                          &orow, &ocol))
        return NULL;
    if (acquire_io(oa, ka, ob, kb, oh, orow, ocol, &io) < 0) return NULL;
    Py_ssize_t na = io.n;
    Py_ssize_t nrows = na > 0 && cols > 0 ? (start + na - 1) / cols - start / cols + 1 : 0;
    if (cols < 1 || start < 0 || (axis != 0 && axis != 1) || io.c.len != 6 * cols * 8 || io.r.len != 6 * nrows * 8) {
        PyErr_SetString(PyExc_ValueError, "stats_heads: axis is not 0 or 1, or the output arrays do not fit");
        release_io(&io);
        return NULL;
    }
    uint64_t *pk = NULL; /* axis 1: the packed flag sums per column (see FIELD) */
    if (axis == 1 && (pk = calloc((size_t)cols, sizeof *pk)) == NULL) {
        release_io(&io);
        return PyErr_NoMemory();
    }
    Stats s;
    memset(&s, 0, sizeof s);
    Py_BEGIN_ALLOW_THREADS
    SH_FNS[ka][kb][io.has_hist](io.a.buf, io.b.buf, na, atol, eta, io.has_hist ? (int64_t *)io.h.buf : NULL, &s,
                                start, cols, axis, nrows, (double *)io.r.buf, (double *)io.c.buf, pk);
    Py_END_ALLOW_THREADS
    free(pk);
    release_io(&io);
    return stats_tuple(&s);
}

/* simd() -> the name of the loops in use; simd(name) selects "portable", "avx2" or "avx512" (ValueError when the
 * CPU lacks it) or "auto" (the widest the CPU has) and returns the name now in use. */
static int simd_supported(int level) {
#ifdef UPD_X86
    __builtin_cpu_init();
    if (level == 2)
        return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
               __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
               __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    if (level == 1) return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#endif
    return level == 0;
}

static int simd_best(void) { return simd_supported(2) ? 2 : simd_supported(1) ? 1 : 0; }

static PyObject *py_simd(PyObject *self, PyObject *args) {
    const char *name = NULL;
    if (!PyArg_ParseTuple(args, "|s", &name)) return NULL;
    if (name != NULL) {
        int level = -1;
        for (int k = 0; k < 3; k++)
            if (strcmp(name, SIMD_NAMES[k]) == 0) level = k;
        if (strcmp(name, "auto") == 0) level = simd_best();
        if (level < 0) {
            PyErr_Format(PyExc_ValueError, "simd: unknown name %s (portable, avx2, avx512 or auto)", name);
            return NULL;
        }
        if (!simd_supported(level)) {
            PyErr_Format(PyExc_ValueError, "simd: this CPU (or build) has no %s path", name);
            return NULL;
        }
        simd_level = level;
    }
    return PyUnicode_FromString(SIMD_NAMES[simd_level]);
}

static PyMethodDef methods[] = {
    {"simd", py_simd, METH_VARARGS, "The SIMD path of the loops (portable, avx2, avx512); simd(name) selects one."},
    {"stats", py_stats, METH_VARARGS, "Fused per-block statistics of base vs fine-tuned weights."},
    {"pair", py_pair, METH_VARARGS, "Fused per-block statistics of two updates of one base."},
    {"widen_bf16", py_widen_bf16, METH_VARARGS, "Exact bfloat16 -> float32 widening."},
    {"stats_rowcol", py_stats_rowcol, METH_VARARGS, "stats and the row and column energies of one block in one pass."},
    {"stats_heads", py_stats_heads, METH_VARARGS, "stats and the head-axis sums of one block in one pass."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_fused", NULL, -1, methods};

/* The widest path the CPU has, capped by UPDELTA_KERNEL_SIMD (portable, avx2 or avx512; other values ignored). */
PyMODINIT_FUNC PyInit__fused(void) {
    simd_level = simd_best();
    const char *env = getenv("UPDELTA_KERNEL_SIMD");
    if (env != NULL)
        for (int k = 0; k < 3; k++)
            if (strcmp(env, SIMD_NAMES[k]) == 0 && k < simd_level) simd_level = k;
    return PyModule_Create(&module);
}
