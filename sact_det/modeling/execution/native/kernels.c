/* Row kernels of the sparse SACT path (fp32 CPU, channels-last rows: a map is an n x c matrix).
 *
 * Plain C, no torch headers: built by sact_det/modeling/execution/native/__init__.py with the system
 * C compiler on first use and called through ctypes with raw pointers (the caller checks dtypes,
 * contiguity and shapes). Every kernel is memory-bound work that torch would do in several passes
 * over a map or with per-element index arithmetic; here each row is read once. Indices are int64.
 */
#include <stdint.h>
#include <string.h>

#define V 8
typedef float vf __attribute__((vector_size(V * sizeof(float))));

static inline vf loadu(const float *p) { vf v; memcpy(&v, p, sizeof v); return v; }
static inline void storeu(float *p, vf v) { memcpy(p, &v, sizeof v); }
static inline float hsum(vf v) { float s = 0.f; for (int i = 0; i < V; i++) s += v[i]; return s; }

/* Per-channel sum and sum of squares over the n rows of x (n, c): s1, s2 (c,) float64 (s2 may be NULL).
 * Rows are summed in float32 in blocks of at most 64, the blocks in float64. */
void sd_channel_sums(const float *x, int64_t n, int64_t c, double *s1, double *s2) {
    enum { BLOCK = 64 };
    for (int64_t j = 0; j < c; j++) { s1[j] = 0.0; if (s2) s2[j] = 0.0; }
    for (int64_t j0 = 0; j0 < c; j0 += 64) {  /* 64 channels: 8 + 8 vector accumulators */
        int64_t cw = c - j0 < 64 ? c - j0 : 64;
        for (int64_t r0 = 0; r0 < n; r0 += BLOCK) {
            int64_t r1 = r0 + BLOCK < n ? r0 + BLOCK : n;
            float a1[64] = {0}, a2[64] = {0};
            if (cw == 64) {
                vf v1[8] = {0}, v2[8] = {0};
                for (int64_t r = r0; r < r1; r++) {
                    const float *p = x + r * c + j0;
                    for (int k = 0; k < 8; k++) { vf t = loadu(p + k * V); v1[k] += t; v2[k] += t * t; }
                }
                for (int k = 0; k < 8; k++) { storeu(a1 + k * V, v1[k]); storeu(a2 + k * V, v2[k]); }
            } else {
                for (int64_t r = r0; r < r1; r++) {
                    const float *p = x + r * c + j0;
                    for (int64_t k = 0; k < cw; k++) { a1[k] += p[k]; a2[k] += p[k] * p[k]; }
                }
            }
            for (int64_t k = 0; k < cw; k++) { s1[j0 + k] += a1[k]; if (s2) s2[j0 + k] += a2[k]; }
        }
    }
}

/* out (m, k) = x[rows] @ wt^T, wt (k, c): a few dot products per row (the halting conv taps); rows are
 * idx[0..m) or, when idx is NULL, 0..m. c % 8 == 0. */
#define DOTS_K(K) \
    static void dots_##K(const float *x, const int64_t *idx, int64_t m, const float *wt, int64_t c, float *out) { \
        for (int64_t i = 0; i < m; i++) { \
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

/* n: rows of x (unused but for the signature's symmetry with the other kernels). Returns 0, or -1 for an
 * unsupported k / c. */
int sd_row_dots(const float *x, int64_t n, const int64_t *idx, int64_t m, const float *wt, int64_t k, int64_t c,
                float *out) {
    (void)n;
    if (c % V) return -1;
    switch (k) {
        case 1: dots_1(x, idx, m, wt, c, out); return 0;
        case 9: dots_9(x, idx, m, wt, c, out); return 0;
        case 10: dots_10(x, idx, m, wt, c, out); return 0;
        default: return -1;
    }
}

/* dst[i] = src[idx[i]] for m rows of c floats. */
void sd_gather_rows(const float *src, int64_t c, const int64_t *idx, int64_t m, float *dst) {
    for (int64_t i = 0; i < m; i++) memcpy(dst + i * c, src + idx[i] * c, c * sizeof(float));
}

/* dst[idx[i]] = src[idx[i]] for m rows of c floats (two maps of the same shape). */
void sd_copy_rows(float *dst, const float *src, int64_t c, const int64_t *idx, int64_t m) {
    for (int64_t i = 0; i < m; i++) memcpy(dst + idx[i] * c, src + idx[i] * c, c * sizeof(float));
}

/* out[idx[i]] = relu(z[i] + x[idx[i]]) for m rows of c floats; out may be x (each row is read first).
 * d1, d2 (c,) float64 or NULL: += sum over the rows of new - old and new^2 - old^2 (old: out[idx[i]] before
 * the write), summed in float32 per block of 64 rows. */
void sd_residual_scatter(float *out, const float *x, int64_t c, const int64_t *idx, int64_t m, const float *z,
                         double *d1, double *d2) {
    enum { BLOCK = 64 };
    float a1[c > 0 ? c : 1], a2[c > 0 ? c : 1];
    for (int64_t i0 = 0; i0 < m; i0 += BLOCK) {
        int64_t i1 = i0 + BLOCK < m ? i0 + BLOCK : m;
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
        if (d1) for (int64_t j = 0; j < c; j++) { d1[j] += a1[j]; d2[j] += a2[j]; }
    }
}

/* out[idx[i]] += w[idx[i]] * x[idx[i]] for m rows of c floats; w: one weight per row of the map. */
void sd_axpy_rows(float *out, const float *x, const float *w, int64_t c, const int64_t *idx, int64_t m) {
    for (int64_t i = 0; i < m; i++) {
        int64_t q = idx[i];
        float a = w[q], *o = out + q * c;
        const float *p = x + q * c;
        for (int64_t j = 0; j < c; j++) o[j] += a * p[j];
    }
}
