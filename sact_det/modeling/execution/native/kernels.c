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
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#define PARALLEL_MIN 65536
#define V 8
typedef float vf __attribute__((vector_size(V * sizeof(float))));

static inline vf loadu(const float *p) { vf v; memcpy(&v, p, sizeof v); return v; }
static inline void storeu(float *p, vf v) { memcpy(p, &v, sizeof v); }
static inline float hsum(vf v) { float s = 0.f; for (int i = 0; i < V; i++) s += v[i]; return s; }

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

/* s1[j] += sum of x[r, j0 + j], s2[j] += sum of squares, rows [r0, r1), j < cw <= 64: float32 within
 * blocks of 64 rows, float64 across blocks. */
static void sums_part(const float *x, int64_t c, int64_t r0, int64_t r1, int64_t j0, int64_t cw,
                      double *s1, double *s2) {
    enum { BLOCK = 64 };
    for (int64_t b0 = r0; b0 < r1; b0 += BLOCK) {
        int64_t b1 = b0 + BLOCK < r1 ? b0 + BLOCK : r1;
        float a1[64] = {0}, a2[64] = {0};
        if (cw == 64) {
            vf v1[8] = {0}, v2[8] = {0};
            for (int64_t r = b0; r < b1; r++) {
                const float *p = x + r * c + j0;
                for (int k = 0; k < 8; k++) { vf t = loadu(p + k * V); v1[k] += t; v2[k] += t * t; }
            }
            for (int k = 0; k < 8; k++) { storeu(a1 + k * V, v1[k]); storeu(a2 + k * V, v2[k]); }
        } else {
            for (int64_t r = b0; r < b1; r++) {
                const float *p = x + r * c + j0;
                for (int64_t k = 0; k < cw; k++) { a1[k] += p[k]; a2[k] += p[k] * p[k]; }
            }
        }
        for (int64_t k = 0; k < cw; k++) { s1[k] += a1[k]; if (s2) s2[k] += a2[k]; }
    }
}

/* Per-channel sum and sum of squares over the n rows of x (n, c): s1, s2 (c,) float64 (s2 may be NULL). */
void sd_channel_sums(const float *x, int64_t n, int64_t c, double *s1, double *s2, int nt) {
    for (int64_t j = 0; j < c; j++) { s1[j] = 0.0; if (s2) s2[j] = 0.0; }
    #pragma omp parallel num_threads(threads_for(nt, n * c))
    {
        int64_t lo, hi;
        my_range(n, &lo, &hi);
        for (int64_t j0 = 0; j0 < c; j0 += 64) {
            int64_t cw = c - j0 < 64 ? c - j0 : 64;
            double p1[64] = {0}, p2[64] = {0};
            sums_part(x, c, lo, hi, j0, cw, p1, s2 ? p2 : NULL);
            #pragma omp critical
            for (int64_t k = 0; k < cw; k++) { s1[j0 + k] += p1[k]; if (s2) s2[j0 + k] += p2[k]; }
        }
    }
}

/* out (m, k) = x[rows] @ wt^T, wt (k, c): a few dot products per row (the halting conv taps); rows are
 * idx[0..m) or, when idx is NULL, 0..m. c % 8 == 0. */
#define DOTS_K(K) \
    static void dots_##K(const float *x, const int64_t *idx, int64_t lo, int64_t hi, const float *wt, int64_t c, \
                         float *out) { \
        for (int64_t i = lo; i < hi; i++) { \
            const float *p = x + (idx ? idx[i] : i) * c; \
            vf a[K]; \
            for (int k = 0; k < K; k++) a[k] = (vf){0}; \
            for (int64_t j = 0; j < c; j += V) { \
                vf s = loadu(p + j); \
                for (int k = 0; k < K; k++) a[k] += s * loadu(wt + k * c + j); \
            } \
            for (int k = 0; k < K; k++) out[i * K + k] = hsum(a[k]); \
        } \
    }
DOTS_K(1)
DOTS_K(9)
DOTS_K(10)

/* x has n rows. Returns 0, -1 for an unsupported k / c, -2 for an index out of range. */
int sd_row_dots(const float *x, int64_t n, const int64_t *idx, int64_t m, const float *wt, int64_t k, int64_t c,
                float *out, int nt) {
    if (c % V || (k != 1 && k != 9 && k != 10)) return -1;
    if (idx && check_index(idx, m, n)) return -2;
    #pragma omp parallel num_threads(threads_for(nt, m * c))
    {
        int64_t lo, hi;
        my_range(m, &lo, &hi);
        if (k == 1) dots_1(x, idx, lo, hi, wt, c, out);
        else if (k == 9) dots_9(x, idx, lo, hi, wt, c, out);
        else dots_10(x, idx, lo, hi, wt, c, out);
    }
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

/* out[idx[i]] = relu(z[i] + x[idx[i]]) for m rows of c <= 4096 floats (out, x: n rows); out may be x (each
 * row is read first). d1, d2 (c,) float64 or NULL: += sum over the rows of new - old and new^2 - old^2 (old:
 * out[idx[i]] before the write), in float32 per block of 64 rows. Returns -1 if c is too large for the delta
 * buffers, -2 for an index out of range. */
int sd_residual_scatter(float *out, const float *x, int64_t n, int64_t c, const int64_t *idx, int64_t m,
                        const float *z, double *d1, double *d2, int nt) {
    enum { BLOCK = 64, CMAX = 4096 };
    if (d1 && c > CMAX) return -1;
    if (check_index(idx, m, n)) return -2;
    #pragma omp parallel num_threads(threads_for(nt, m * c))
    {
        int64_t lo, hi;
        my_range(m, &lo, &hi);
        float a1[CMAX], a2[CMAX];
        double p1[CMAX], p2[CMAX];
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
