/* Row kernels of the sparse SACT path (fp32 CPU, channels-last rows: a map is an n x c matrix).
 *
 * Plain C, no torch headers: built by sact_det/modeling/execution/native/__init__.py with the system
 * C compiler on first use and called through ctypes with raw pointers (the caller checks dtypes,
 * contiguity and shapes; the kernels check index ranges). Every kernel is memory-bound work that torch
 * does in several passes over a map or with slow indexed writes; here each row is read once. Indices
 * are int64.
 * Rows are split over `nt` OpenMP threads (built with -fopenmp, the library shares torch's libgomp:
 * same soname, one thread pool); calls moving fewer than PARALLEL_MIN floats stay on one thread.
 */
#include <stdint.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#define PARALLEL_MIN 65536
#define V 8
typedef float vf __attribute__((vector_size(V * sizeof(float))));

static inline vf loadu(const float *p) { vf v; memcpy(&v, p, sizeof v); return v; }
static inline void storeu(float *p, vf v) { memcpy(p, &v, sizeof v); }
typedef float vf4 __attribute__((vector_size(4 * sizeof(float))));
/* The sum of the 8 lanes as a tree (halves added: 8 -> 4 -> 2 -> 1), not 8 dependent scalar adds. */
static inline float hsum(vf v) {
    vf4 lo, hi;
    memcpy(&lo, &v, sizeof lo);
    memcpy(&hi, (const char *)&v + sizeof lo, sizeof hi);
    vf4 s = lo + hi;
    return (s[0] + s[2]) + (s[1] + s[3]);
}

/* 0 if every idx[i] lies in [0, n), else -2 (the kernels check their indices before touching memory). */
static int check_index(const int64_t *idx, int64_t m, int64_t n) {
    int bad = 0;
    for (int64_t i = 0; i < m; i++) bad |= (idx[i] < 0) | (idx[i] >= n);
    return bad ? -2 : 0;
}

static inline int threads_for(int nt, int64_t floats) { return nt > 1 && floats >= PARALLEL_MIN ? nt : 1; }

/* [lo, hi) of m items for the calling thread of the current parallel region. */
static inline void my_range(int64_t m, int64_t *lo, int64_t *hi) {
#ifdef _OPENMP
    int64_t t = omp_get_thread_num(), n = omp_get_num_threads();
#else
    int64_t t = 0, n = 1;
#endif
    *lo = m * t / n;
    *hi = m * (t + 1) / n;
}

#define PREFETCH_ROWS 6 /* rows ahead a streaming kernel asks the cache for (hardware prefetch alone left a
                          * single-thread pass over a map at about half the memory bandwidth) */

/* Ask the cache for the c floats at p (one request per 64-byte line). */
static inline void prefetch(const float *p, int64_t c) {
    for (int64_t j = 0; j < c; j += 16) __builtin_prefetch(p + j, 0, 3);
}

/* Ask for row r + PREFETCH_ROWS of the n rows of c floats at x, if there is one. */
static inline void prefetch_row(const float *x, int64_t r, int64_t n, int64_t c) {
    if (r + PREFETCH_ROWS < n) prefetch(x + (r + PREFETCH_ROWS) * c, c);
}

/* a1[j] += v[j], a2[j] += v[j]^2 for one row of c floats (c % 8 == 0 vectorised, any c). */
static inline void accumulate_row(const float *v, int64_t c, float *a1, float *a2) {
    int64_t j = 0;
    for (; j + V <= c; j += V) {
        vf t = loadu(v + j);
        storeu(a1 + j, loadu(a1 + j) + t);
        storeu(a2 + j, loadu(a2 + j) + t * t);
    }
    for (; j < c; j++) { a1[j] += v[j]; a2[j] += v[j] * v[j]; }
}

/* p1[j] += sum over rows [r0, r1) of x[r, j], p2[j] += sum of squares, j < c <= SUMS_MAX: one streaming pass,
 * float32 accumulators (in L1) within blocks of 64 rows, float64 across blocks. */
#define SUMS_MAX 4096
static void sums_rows(const float *x, int64_t n, int64_t c, int64_t r0, int64_t r1, double *p1, double *p2) {
    enum { BLOCK = 64 };
    float a1[SUMS_MAX], a2[SUMS_MAX];
    for (int64_t b0 = r0; b0 < r1; b0 += BLOCK) {
        int64_t b1 = b0 + BLOCK < r1 ? b0 + BLOCK : r1;
        memset(a1, 0, c * sizeof(float));
        memset(a2, 0, c * sizeof(float));
        for (int64_t r = b0; r < b1; r++) {
            prefetch_row(x, r, n, c);
            accumulate_row(x + r * c, c, a1, a2);
        }
        for (int64_t j = 0; j < c; j++) { p1[j] += a1[j]; p2[j] += a2[j]; }
    }
}

/* Per-channel sum and sum of squares over the n rows of x (n, c): s1, s2 (c,) float64 (s2 may be NULL).
 * c <= SUMS_MAX (per-thread partials on the stack); returns -1 for a wider map. */
int sd_channel_sums(const float *x, int64_t n, int64_t c, double *s1, double *s2, int nt) {
    if (c > SUMS_MAX) return -1;
    for (int64_t j = 0; j < c; j++) { s1[j] = 0.0; if (s2) s2[j] = 0.0; }
    #pragma omp parallel num_threads(threads_for(nt, n * c))
    {
        int64_t lo, hi;
        my_range(n, &lo, &hi);
        double p1[SUMS_MAX], p2[SUMS_MAX];
        for (int64_t j = 0; j < c; j++) { p1[j] = 0.0; p2[j] = 0.0; }
        sums_rows(x, n, c, lo, hi, p1, p2);
        #pragma omp critical
        for (int64_t j = 0; j < c; j++) { s1[j] += p1[j]; if (s2) s2[j] += p2[j]; }
    }
    return 0;
}

/* out (m, k) = x[rows] @ wt^T, wt (k, c): a few dot products per row (the halting conv taps); rows are
 * idx[0..m) or, when idx is NULL, 0..m. c % 8 == 0.
 * Up to DOT_TILED_ABOVE channels: row by row, the row PREFETCH_ROWS ahead requested first. Wider maps: wt is
 * re-laid out with the k values of every 8 channels side by side (read as (k, c), its rows lie c floats apart:
 * 4 KiB at c = 1024, all in one set of the 8-way L1 cache) and the rows are summed in tiles of DOT_TILE,
 * DOT_BLOCK channels at a time, so that the k x DOT_BLOCK slice of wt and the tile's accumulators stay in L1:
 * 1.6-2x faster at c = 1024 (res4), 2.9x at 2048; at c = 512 neither way was faster. */
#define DOT_TILED_ABOVE 512
#define DOT_BLOCK 128
#define DOT_TILE 8
#define ROW(i) (x + (idx ? idx[i] : (i)) * c)
#define DOTS_K(K) \
    static void dots_##K(const float *x, const int64_t *idx, int64_t lo, int64_t hi, const float *wt, int64_t c, \
                         float *out) { \
        for (int64_t i = lo; i < hi; i++) { \
            const float *p = ROW(i); \
            if (i + PREFETCH_ROWS < hi) prefetch(ROW(i + PREFETCH_ROWS), c); \
            vf a[K]; \
            for (int k = 0; k < K; k++) a[k] = (vf){0}; \
            for (int64_t j = 0; j < c; j += V) { \
                vf s = loadu(p + j); \
                for (int k = 0; k < K; k++) a[k] += s * loadu(wt + k * c + j); \
            } \
            for (int k = 0; k < K; k++) out[i * K + k] = hsum(a[k]); \
        } \
    } \
    /* wi: wt interleaved, (c / 8, K, 8) */ \
    static void dots_tiled_##K(const float *x, const int64_t *idx, int64_t lo, int64_t hi, const float *wi, \
                               int64_t c, float *out) { \
        vf a[DOT_TILE][K]; \
        for (int64_t i0 = lo; i0 < hi; i0 += DOT_TILE) { \
            int64_t nr = hi - i0 < DOT_TILE ? hi - i0 : DOT_TILE; \
            for (int64_t r = 0; r < nr; r++) for (int k = 0; k < K; k++) a[r][k] = (vf){0}; \
            for (int64_t j0 = 0; j0 < c; j0 += DOT_BLOCK) { \
                int64_t j1 = j0 + DOT_BLOCK < c ? j0 + DOT_BLOCK : c; \
                for (int64_t r = 0; r < nr; r++) { \
                    const float *p = ROW(i0 + r); \
                    if (i0 + r + DOT_TILE < hi) prefetch(ROW(i0 + r + DOT_TILE) + j0, j1 - j0); \
                    vf t[K]; \
                    for (int k = 0; k < K; k++) t[k] = a[r][k]; \
                    for (int64_t j = j0; j < j1; j += V) { \
                        vf s = loadu(p + j); \
                        for (int k = 0; k < K; k++) t[k] += s * loadu(wi + j * K + k * V); \
                    } \
                    for (int k = 0; k < K; k++) a[r][k] = t[k]; \
                } \
            } \
            for (int64_t r = 0; r < nr; r++) for (int k = 0; k < K; k++) out[(i0 + r) * K + k] = hsum(a[r][k]); \
        } \
    }
DOTS_K(1)
DOTS_K(9)
DOTS_K(10)

/* x has n rows. Returns 0, -1 for an unsupported k / c, -2 for an index out of range, -3 out of memory. */
int sd_row_dots(const float *x, int64_t n, const int64_t *idx, int64_t m, const float *wt, int64_t k, int64_t c,
                float *out, int nt) {
    if (c % V || (k != 1 && k != 9 && k != 10)) return -1;
    if (idx && check_index(idx, m, n)) return -2;
    float *wi = NULL;
    if (c > DOT_TILED_ABOVE) {
        if (!(wi = malloc((size_t)(k * c) * sizeof(float)))) return -3;
        for (int64_t j = 0; j < c; j += V)
            for (int64_t t = 0; t < k; t++) memcpy(wi + j * k + t * V, wt + t * c + j, V * sizeof(float));
    }
    #pragma omp parallel num_threads(threads_for(nt, m * c))
    {
        int64_t lo, hi;
        my_range(m, &lo, &hi);
        if (wi) {
            if (k == 1) dots_tiled_1(x, idx, lo, hi, wi, c, out);
            else if (k == 9) dots_tiled_9(x, idx, lo, hi, wi, c, out);
            else dots_tiled_10(x, idx, lo, hi, wi, c, out);
        } else {
            if (k == 1) dots_1(x, idx, lo, hi, wt, c, out);
            else if (k == 9) dots_9(x, idx, lo, hi, wt, c, out);
            else dots_10(x, idx, lo, hi, wt, c, out);
        }
    }
    free(wi);
    return 0;
}

/* The halting logit from its conv taps: out[p] = bias + sum over the k2 taps t (k2 = 1 or 9, order (ky, kx))
 * whose neighbour q = p + (ky - r, kx - r) lies in the h x w map of (taps[q * stride + t] + cst[t]), or -inf
 * (a score of exactly 0 after the sigmoid) where mask (h*w bytes, may be NULL: every position) is 0. A k x k
 * conv with zero padding r = k / 2 of the affinely normalised map, from its per-tap products (sd_row_dots).
 * Returns -1 for another k2. */
int sd_tap_logits(const float *taps, int64_t stride, int64_t h, int64_t w, int64_t k2, const float *cst,
                  float bias, const uint8_t *mask, float *out, int nt) {
    if (k2 != 1 && k2 != 9) return -1;
    #pragma omp parallel for num_threads(threads_for(nt, h * w * k2)) schedule(static)
    for (int64_t y = 0; y < h; y++) {
        for (int64_t x = 0; x < w; x++) {
            int64_t p = y * w + x;
            float z = bias;
            if (k2 == 1) {
                z += taps[p * stride] + cst[0];
            } else if (y > 0 && y < h - 1 && x > 0 && x < w - 1) {  /* interior: every neighbour in the map */
                for (int64_t t = 0; t < 9; t++) z += taps[(p + (t / 3 - 1) * w + t % 3 - 1) * stride + t] + cst[t];
            } else {
                for (int64_t t = 0; t < 9; t++) {
                    int64_t qy = y + t / 3 - 1, qx = x + t % 3 - 1;
                    if (qy >= 0 && qy < h && qx >= 0 && qx < w) z += taps[(qy * w + qx) * stride + t] + cst[t];
                }
            }
            out[p] = mask && !mask[p] ? -INFINITY : z;
        }
    }
    return 0;
}

/* The index sets of one image for the gather kernels, from its h x w active and dilated masks m, dm (bytes;
 * dm must hold the 3x3 neighbourhood of m at dilation d, k2 = 9, or m itself, k2 = 1): aidx the N active
 * positions (row-major), didx the Nd dilated positions (the N active ones first, then the rest row-major),
 * nbr (N, k2) the didx row of each active position's neighbours (order (ky, kx); Nd outside the map or dm),
 * counts = {N, Nd}. aidx, didx and row (scratch) hold h*w int64, nbr h*w*k2. Returns -1 for another k2. */
int sd_neighbour_index(const uint8_t *m, const uint8_t *dm, int64_t h, int64_t w, int64_t d, int64_t k2,
                       int64_t *aidx, int64_t *didx, int64_t *nbr, int64_t *row, int64_t *counts) {
    int64_t hw = h * w, n = 0, nd;
    if (k2 != 1 && k2 != 9) return -1;
    for (int64_t p = 0; p < hw; p++) if (m[p]) aidx[n++] = p;
    memcpy(didx, aidx, n * sizeof(int64_t));
    nd = n;
    for (int64_t p = 0; p < hw; p++) if (dm[p] && !m[p]) didx[nd++] = p;
    for (int64_t p = 0; p < hw; p++) row[p] = nd;
    for (int64_t i = 0; i < nd; i++) row[didx[i]] = i;
    for (int64_t i = 0; i < n; i++) {
        int64_t y = aidx[i] / w, x = aidx[i] % w, *o = nbr + i * k2;
        if (k2 == 1) { o[0] = i; continue; }
        for (int64_t t = 0; t < 9; t++) {
            int64_t qy = y + (t / 3 - 1) * d, qx = x + (t % 3 - 1) * d;
            o[t] = qy >= 0 && qy < h && qx >= 0 && qx < w ? row[qy * w + qx] : nd;
        }
    }
    counts[0] = n;
    counts[1] = nd;
    return 0;
}

/* dst[i] = src[idx[i]] for m rows of c floats; src has n rows. Returns 0, or -2 for an index out of range. */
int sd_gather_rows(const float *src, int64_t n, int64_t c, const int64_t *idx, int64_t m, float *dst, int nt) {
    if (check_index(idx, m, n)) return -2;
    #pragma omp parallel num_threads(threads_for(nt, m * c))
    {
        int64_t lo, hi;
        my_range(m, &lo, &hi);
        for (int64_t i = lo; i < hi; i++) memcpy(dst + i * c, src + idx[i] * c, c * sizeof(float));
    }
    return 0;
}

/* dst[idx[i]] = src[idx[i]] for m rows of c floats (two maps of n rows). Returns 0, or -2 (index range). */
int sd_copy_rows(float *dst, const float *src, int64_t n, int64_t c, const int64_t *idx, int64_t m, int nt) {
    if (check_index(idx, m, n)) return -2;
    #pragma omp parallel num_threads(threads_for(nt, m * c))
    {
        int64_t lo, hi;
        my_range(m, &lo, &hi);
        for (int64_t i = lo; i < hi; i++) memcpy(dst + idx[i] * c, src + idx[i] * c, c * sizeof(float));
    }
    return 0;
}

/* out[idx[i]] = relu(z[i] + x[idx[i]]) for m rows of c floats (out, x: n rows); out may be x (each
 * row is read first). d1, d2 (c,) float64 or NULL: += sum over the rows of new - old and new^2 - old^2 (old:
 * out[idx[i]] before the write), in float32 per block of 64 rows. Returns -1 if c > SUMS_MAX with deltas, -2
 * for an index out of range. */
int sd_residual_scatter(float *out, const float *x, int64_t n, int64_t c, const int64_t *idx, int64_t m,
                        const float *z, double *d1, double *d2, int nt) {
    enum { BLOCK = 64 };
    if (d1 && c > SUMS_MAX) return -1;
    if (check_index(idx, m, n)) return -2;
    #pragma omp parallel num_threads(threads_for(nt, m * c))
    {
        int64_t lo, hi;
        my_range(m, &lo, &hi);
        float a1[SUMS_MAX], a2[SUMS_MAX];
        double p1[SUMS_MAX], p2[SUMS_MAX];
        if (d1) for (int64_t j = 0; j < c; j++) { p1[j] = 0.0; p2[j] = 0.0; }
        for (int64_t i0 = lo; i0 < hi; i0 += BLOCK) {
            int64_t i1 = i0 + BLOCK < hi ? i0 + BLOCK : hi;
            if (d1) for (int64_t j = 0; j < c; j++) { a1[j] = 0.f; a2[j] = 0.f; }
            for (int64_t i = i0; i < i1; i++) {
                float *o = out + idx[i] * c;
                const float *p = x + idx[i] * c, *r = z + i * c;
                if (d1) {
                    for (int64_t j = 0; j < c; j++) {
                        float old = o[j], v = r[j] + p[j];
                        v = v > 0.f ? v : 0.f;
                        a1[j] += v - old;
                        a2[j] += v * v - old * old;
                        o[j] = v;
                    }
                } else {
                    for (int64_t j = 0; j < c; j++) { float v = r[j] + p[j]; o[j] = v > 0.f ? v : 0.f; }
                }
            }
            if (d1) for (int64_t j = 0; j < c; j++) { p1[j] += a1[j]; p2[j] += a2[j]; }
        }
        if (d1) {
            #pragma omp critical
            for (int64_t j = 0; j < c; j++) { d1[j] += p1[j]; d2[j] += p2[j]; }
        }
    }
    return 0;
}

/* out[idx[i]] += w[idx[i]] * x[idx[i]] for m rows of c floats; w: one weight per row of the n-row maps.
 * Returns 0, or -2 for an index out of range. */
int sd_axpy_rows(float *out, const float *x, const float *w, int64_t n, int64_t c, const int64_t *idx, int64_t m,
                 int nt) {
    if (check_index(idx, m, n)) return -2;
    #pragma omp parallel num_threads(threads_for(nt, m * c))
    {
        int64_t lo, hi;
        my_range(m, &lo, &hi);
        for (int64_t i = lo; i < hi; i++) {
            int64_t q = idx[i];
            float a = w[q], *o = out + q * c;
            const float *p = x + q * c;
            for (int64_t j = 0; j < c; j++) o[j] += a * p[j];
        }
    }
    return 0;
}

/* One step of the SACT halting state over n positions (the arithmetic of halting/state.py, HaltingState.step,
 * in one pass): h the unit's scores (ignored when last); cumsum, num_units, remainder updated in place; active
 * (bytes) read, new_active written (may not alias active: the old mask is kept by the caller); weight the unit's
 * output weight p. All float32 except the masks; the comparison is against (float)(1 - eps) as in torch. */
int sd_halting_step(const float *h, float *cumsum, const uint8_t *active, uint8_t *new_active, float *num_units,
                    float *remainder, float *weight, int64_t n, double eps, int last) {
    const float thresh = (float)(1.0 - eps);
    for (int64_t i = 0; i < n; i++) {
        int act = active[i] != 0, halting, running;
        float rem = 1.0f - cumsum[i];
        if (last) {
            halting = act;
            running = 0;
        } else {
            float nc = cumsum[i] + h[i];
            halting = act && nc >= thresh;
            running = act && !halting;
            if (running) cumsum[i] = nc;
        }
        weight[i] = running ? h[i] : (halting ? rem : 0.0f);
        num_units[i] += (float)act;
        if (halting) remainder[i] = rem;
        new_active[i] = (uint8_t)(act && !halting);
    }
    return 0;
}
