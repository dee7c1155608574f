/* Exact linear assignment (Jonker-Volgenant) with warm starts, certified in float64.
 *
 * Minimises sum_i m[i, x[i]] with m = sign * cost (sign -1: maximise cost). The column
 * duals v are the whole state: for a row i assigned to column x[i], x[i] minimises
 * m[i, j] - v[j] over j (the row dual u[i] is that minimum). A warm start keeps the
 * previous v and re-seats every row by a shortest augmenting path (Dijkstra on reduced
 * costs; from good duals most paths are one step, to the row's old column). A cold start
 * takes v from column reduction with reduction transfer, as in Jonker & Volgenant (1987),
 * or, for costs close to rank one after centring, from the rank-one part's own duals.
 * Each Dijkstra step is one pass over all columns (relax the open ones from the row just
 * reached, find the next closest), which runs four columns at a time: measured 1.5x
 * (warm) to 2.5x (cold) faster than Jonker-Volgenant's column lists with augmenting row
 * reduction on weight-matching costs (docs/results.md).
 *
 * Every answer is checked before it is returned: with u[i] = m[i, x[i]] - v[x[i]], every
 * reduced cost m[i, j] - u[i] - v[j] must be >= -tol. Then no assignment is cheaper by more
 * than n * tol, i.e. the answer is optimal to float64 rounding. A failed check (or a
 * non-finite cost) returns a non-zero status and the caller solves it another way.
 *
 * The solves run without the GIL, so independent problems solve side by side on threads.
 * The whole-row scans use AVX2 where the CPU has it (same values and steps as plain C).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    const double *c;   /* cost, row-major n x n */
    double sign;       /* m = sign * c */
    Py_ssize_t n;
    int64_t *x;        /* row -> column */
    int64_t *y;        /* column -> row */
    double *v;         /* column duals */
    int64_t *free_;    /* work: free rows */
    int64_t *col;      /* work: column list */
    int64_t *pred;     /* work: predecessor row of a column */
    int64_t *done;     /* work: -1 where a column's shortest path is final, else 0 */
    double *d;         /* work: path lengths */
} Lap;

#define M(L, i, j) ((L)->sign * (L)->c[(i) * (L)->n + (j)])

/* Cold start: row reduction, column reduction and reduction transfer (duals are
 * only defined up to a constant per row, so v of the row-reduced matrix serves m). Returns the number of free rows
 * (listed in free_). */
static Py_ssize_t cold_init(Lap *L) {
    Py_ssize_t n = L->n, i, j, nfree = 0;
    int64_t *imin = L->pred, *matches = L->col;
    double *r = L->d;  /* row minima: column reduction of the row-reduced matrix */
    for (i = 0; i < n; i++) {
        double mn = M(L, i, 0);
        for (j = 1; j < n; j++) { double h = M(L, i, j); if (h < mn) mn = h; }
        r[i] = mn;
    }
    for (j = 0; j < n; j++) { L->v[j] = M(L, 0, j) - r[0]; imin[j] = 0; }
    for (i = 1; i < n; i++)
        for (j = 0; j < n; j++) {
            double h = M(L, i, j) - r[i];
            if (h < L->v[j]) { L->v[j] = h; imin[j] = i; }
        }
    for (i = 0; i < n; i++) { matches[i] = 0; L->x[i] = -1; }
    for (j = n - 1; j >= 0; j--) {
        i = imin[j];
        if (++matches[i] == 1) { L->x[i] = j; L->y[j] = i; }
        else if (L->v[j] < L->v[L->x[i]]) {
            int64_t j1 = L->x[i];
            L->x[i] = j; L->y[j] = i; L->y[j1] = -1;
        } else L->y[j] = -1;
    }
    for (i = 0; i < n; i++) {
        if (matches[i] == 0) { L->free_[nfree++] = i; continue; }
        if (matches[i] != 1) continue;
        int64_t j1 = L->x[i];
        double mn = INFINITY;
        for (j = 0; j < n; j++)
            if (j != j1) { double h = M(L, i, j) - L->v[j]; if (h < mn) mn = h; }
        if (n > 1) L->v[j1] -= mn - r[i];
    }
    return nfree;
}

/* Warm start: the previous column duals, every row free. Keeping the rows whose column
 * still minimises their reduced cost measured slower: with the costs moved, a third of
 * them are not tight (even when the answer has not changed), and a shortest path from the
 * kept duals re-seats nearly every row at its old column in one step (the previous
 * assignment itself is not needed). */
static Py_ssize_t warm_init(Lap *L) {
    Py_ssize_t n = L->n;
    for (Py_ssize_t j = 0; j < n; j++) { L->y[j] = -1; L->x[j] = -1; L->free_[j] = j; }
    return n;
}


/* Row scans: the loops over a whole row of costs (the bound on |cost|, a Dijkstra step,
 * the smallest reduced cost of the certificate) are most of a solve. On x86-64 machines
 * with AVX2 (checked at import) they run four columns at a time; elsewhere in plain C.
 * Both compute every reduced cost as (sign * c - v) - h in the same order, compare with the
 * same strict tests and break ties towards the first column, so the answers are the same. */
#if (defined(__GNUC__) || defined(__clang__)) && defined(__x86_64__)
#include <immintrin.h>
#define LAP_AVX2 1
static int use_avx2 = 0;
#define AVX2 __attribute__((target("avx2")))
#endif

/* 0 when every |cost| is at most 1e300 (sets *scale to the largest), else 2 (also NaN). */
static int bounds_c(const double *c, Py_ssize_t nn, double *scale) {
    double mx = 0;
    for (Py_ssize_t i = 0; i < nn; i++) {
        double a = fabs(c[i]);
        if (!(a <= 1e300)) return 2;
        if (a > mx) mx = a;
    }
    *scale = mx;
    return 0;
}

static double row_min_c(const double *row, const double *v, double sign, Py_ssize_t n) {
    double mn = INFINITY;
    for (Py_ssize_t j = 0; j < n; j++) { double h = sign * row[j] - v[j]; if (h < mn) mn = h; }
    return mn;
}

#ifdef LAP_AVX2
AVX2 static int bounds_avx2(const double *c, Py_ssize_t nn, double *scale) {
    const __m256d nosign = _mm256_castsi256_pd(_mm256_set1_epi64x(0x7fffffffffffffffLL)),
                  lim = _mm256_set1_pd(1e300);
    __m256d mx = _mm256_setzero_pd(), ok = _mm256_castsi256_pd(_mm256_set1_epi64x(-1));
    Py_ssize_t i = 0;
    for (; i + 4 <= nn; i += 4) {
        __m256d a = _mm256_and_pd(_mm256_loadu_pd(c + i), nosign);
        ok = _mm256_and_pd(ok, _mm256_cmp_pd(a, lim, _CMP_LE_OQ));  /* false on NaN */
        mx = _mm256_max_pd(mx, a);
    }
    if (_mm256_movemask_pd(ok) != 0xF) return 2;
    double m[4];
    _mm256_storeu_pd(m, mx);
    double best = fmax(fmax(m[0], m[1]), fmax(m[2], m[3]));
    for (; i < nn; i++) {
        double a = fabs(c[i]);
        if (!(a <= 1e300)) return 2;
        if (a > best) best = a;
    }
    *scale = best;
    return 0;
}

AVX2 static double row_min_avx2(const double *row, const double *v, double sign,
                                Py_ssize_t n) {
    const __m256d s = _mm256_set1_pd(sign);
    __m256d a = _mm256_set1_pd(INFINITY);
    Py_ssize_t j = 0;
    for (; j + 4 <= n; j += 4)
        a = _mm256_min_pd(a, _mm256_sub_pd(_mm256_mul_pd(s, _mm256_loadu_pd(row + j)),
                                           _mm256_loadu_pd(v + j)));
    double la[4], mn;
    _mm256_storeu_pd(la, a);
    mn = fmin(fmin(la[0], la[1]), fmin(la[2], la[3]));
    for (; j < n; j++) { double h = sign * row[j] - v[j]; if (h < mn) mn = h; }
    return mn;
}
#endif

static int bounds(const double *c, Py_ssize_t nn, double *scale) {
#ifdef LAP_AVX2
    if (use_avx2) return bounds_avx2(c, nn, scale);
#endif
    return bounds_c(c, nn, scale);
}

static double row_min(const Lap *L, Py_ssize_t i) {
    const double *row = L->c + i * L->n;
#ifdef LAP_AVX2
    if (use_avx2) return row_min_avx2(row, L->v, L->sign, L->n);
#endif
    return row_min_c(row, L->v, L->sign, L->n);
}

/* One Dijkstra step of the shortest augmenting path: relax every open column j (done[j]
 * == 0) from row i, d[j] = min(d[j], m[i, j] - v[j] - h) (pred[j] = i where it improves),
 * and return the open column with the smallest d, the first one on ties. */
static int64_t step_c(Lap *L, int64_t i, double h) {
    const double *row = L->c + i * L->n, *v = L->v;
    double *d = L->d, best = INFINITY;
    int64_t bj = -1;
    for (Py_ssize_t j = 0; j < L->n; j++) {
        if (L->done[j]) continue;
        double c2 = L->sign * row[j] - v[j] - h;
        if (c2 < d[j]) { d[j] = c2; L->pred[j] = i; }
        if (d[j] < best) { best = d[j]; bj = j; }
    }
    return bj;
}

#ifdef LAP_AVX2
AVX2 static int64_t step_avx2(Lap *L, int64_t i, double h) {
    const double *row = L->c + i * L->n, *v = L->v;
    double *d = L->d, *pred = (double *)L->pred;  /* int64 bits moved as doubles: exact */
    const double *done = (const double *)L->done;  /* -1: all bits set, a blend mask */
    const Py_ssize_t n = L->n;
    const __m256d s = _mm256_set1_pd(L->sign), hv = _mm256_set1_pd(h),
                  iv = _mm256_castsi256_pd(_mm256_set1_epi64x(i)), inf = _mm256_set1_pd(INFINITY),
                  four = _mm256_set1_pd(4.0);
    __m256d kmin = inf, imin = _mm256_set1_pd(-1.0), jv = _mm256_setr_pd(0, 1, 2, 3);
    Py_ssize_t j = 0;
    for (; j + 4 <= n; j += 4) {
        __m256d dj = _mm256_loadu_pd(d + j), mj = _mm256_loadu_pd(done + j);
        __m256d cj = _mm256_sub_pd(_mm256_sub_pd(_mm256_mul_pd(s, _mm256_loadu_pd(row + j)),
                                                 _mm256_loadu_pd(v + j)), hv);
        __m256d upd = _mm256_andnot_pd(mj, _mm256_cmp_pd(cj, dj, _CMP_LT_OQ));
        dj = _mm256_blendv_pd(dj, cj, upd);
        _mm256_storeu_pd(d + j, dj);
        _mm256_storeu_pd(pred + j, _mm256_blendv_pd(_mm256_loadu_pd(pred + j), iv, upd));
        __m256d key = _mm256_blendv_pd(dj, inf, mj);
        __m256d lt = _mm256_cmp_pd(key, kmin, _CMP_LT_OQ);  /* per lane: the first minimum */
        kmin = _mm256_blendv_pd(kmin, key, lt);
        imin = _mm256_blendv_pd(imin, jv, lt);
        jv = _mm256_add_pd(jv, four);
    }
    double lk[4], li[4], best = INFINITY;
    int64_t bj = -1;
    _mm256_storeu_pd(lk, kmin);
    _mm256_storeu_pd(li, imin);
    for (int l = 0; l < 4; l++)  /* the lanes' minima: the smallest, then the first column */
        if (li[l] >= 0 && (lk[l] < best || (lk[l] == best && (int64_t)li[l] < bj))) {
            best = lk[l];
            bj = (int64_t)li[l];
        }
    for (; j < n; j++) {
        if (L->done[j]) continue;
        double c2 = L->sign * row[j] - v[j] - h;
        if (c2 < d[j]) { d[j] = c2; L->pred[j] = i; }
        if (d[j] < best) { best = d[j]; bj = j; }
    }
    return bj;
}
#endif

static int64_t step(Lap *L, int64_t i, double h) {
#ifdef LAP_AVX2
    if (use_avx2) return step_avx2(L, i, h);
#endif
    return step_c(L, i, h);
}

/* A shortest augmenting path from each free row (Dijkstra on the reduced costs m - v from
 * d = +inf; the columns whose path is final are listed in col), then the duals of those
 * columns move by their distance short of the path's end, and the path is flipped.
 * Returns -1 when no open column is reachable (reduced costs overflowed to +inf: the
 * solve fails and the caller answers another way), else 0. */
static int augment(Lap *L, Py_ssize_t nfree) {
    Py_ssize_t n = L->n;
    int64_t *col = L->col;
    double *d = L->d, *v = L->v;
    for (Py_ssize_t f = 0; f < nfree; f++) {
        int64_t fr = L->free_[f], i = fr, end;
        Py_ssize_t nd = 0, j;
        double h = 0, mn;
        for (j = 0; j < n; j++) { d[j] = INFINITY; L->done[j] = 0; }
        for (;;) {
            int64_t j1 = step(L, i, h);
            if (j1 < 0) return -1;
            mn = d[j1];
            if (L->y[j1] < 0) { end = j1; break; }
            L->done[j1] = -1;
            col[nd++] = j1;
            i = L->y[j1];
            h = L->sign * L->c[i * n + j1] - v[j1] - mn;
        }
        for (Py_ssize_t k = 0; k < nd; k++) { j = col[k]; v[j] += d[j] - mn; }
        for (;;) {
            int64_t ii = L->pred[end], jj = L->x[ii];
            L->y[end] = ii;
            L->x[ii] = end;
            end = jj;
            if (ii == fr) break;
        }
    }
    return 0;
}

/* Sums with four independent accumulators (one running sum is a chain of dependent
 * additions, which the compiler may not reorder). */
static double dot(const double *p, const double *q, Py_ssize_t n) {
    double s0 = 0, s1 = 0, s2 = 0, s3 = 0;
    Py_ssize_t j = 0;
    for (; j + 4 <= n; j += 4) {
        s0 += p[j] * q[j]; s1 += p[j + 1] * q[j + 1];
        s2 += p[j + 2] * q[j + 2]; s3 += p[j + 3] * q[j + 3];
    }
    for (; j < n; j++) s0 += p[j] * q[j];
    return (s0 + s1) + (s2 + s3);
}

static double sum(const double *p, Py_ssize_t n) {
    double s0 = 0, s1 = 0, s2 = 0, s3 = 0;
    Py_ssize_t j = 0;
    for (; j + 4 <= n; j += 4) { s0 += p[j]; s1 += p[j + 1]; s2 += p[j + 2]; s3 += p[j + 3]; }
    for (; j < n; j++) s0 += p[j];
    return (s0 + s1) + (s2 + s3);
}

typedef struct { double key; int64_t idx; } Keyed;

static int by_key(const void *p, const void *q) {
    const Keyed *a = p, *b = q;
    if (a->key != b->key) return a->key < b->key ? -1 : 1;
    return (a->idx > b->idx) - (a->idx < b->idx);
}

#define RANK_ONE_SHARE 0.3  /* the top singular value's share of the centred costs' energy */

/* Cold start for costs close to rank one after centring, m[i, j] ~ r[i] + k[j] + a[i] b[j]
 * (weight-matching costs of convolutions are: the column-reduction start leaves nearly
 * every row free there, and the augmenting paths get long). The rank-one part is
 * minimised by pairing a in increasing order with b in decreasing order; along that
 * pairing the column duals v[t+1] = v[t] + (a[t] + a[t+1]) / 2 * (b[t+1] - b[t]) are
 * feasible for it (the midpoint of the interval its neighbours allow), and k is added
 * back. The warm start then re-seats every row from these duals; they are close to
 * optimal, so the augmenting paths are short. a and b come from a few power iterations
 * on the centred matrix (never formed). Returns 1 when it set v, 0 when the costs are not
 * close enough to rank one (the usual cold start is then used). */
__attribute__((noinline))  /* kept out of solve_one: inlined, it slowed the warm path */
static int rank_one_start(Lap *L) {
    Py_ssize_t n = L->n, i, j;
    if (n < 8) return 0;
    double *r = malloc((size_t)(4 * n) * sizeof(double));
    Keyed *ka = malloc((size_t)(2 * n) * sizeof(Keyed));
    if (!r || !ka) { free(r); free(ka); return 0; }
    double *k = r + n, *a = r + 2 * n, *b = r + 3 * n, g = 0, sq = 0, rr = 0, kk = 0;
    Keyed *kb = ka + n;
    int ok = 0;
    for (j = 0; j < n; j++) k[j] = 0;
    for (i = 0; i < n; i++) {
        const double *row = L->c + i * n;
        for (j = 0; j < n; j++) k[j] += row[j];
        double s = L->sign * sum(row, n);
        sq += dot(row, row, n);
        r[i] = s / n;
        g += s;
    }
    for (j = 0; j < n; j++) k[j] *= L->sign;
    g /= (double)n * n;
    for (j = 0; j < n; j++) { k[j] /= n; kk += k[j] * k[j]; }
    for (i = 0; i < n; i++) rr += r[i] * r[i];
    double total = sq - n * rr - n * kk + (double)n * n * g * g, s2 = 0, prev = -1;
    if (!(total > 1e-300)) goto done;
    for (j = 0; j < n; j++) b[j] = sin(1.0 + 0.7548776662 * j);
    for (int it = 0; it < 12; it++) {
        double sb = 0, kb_ = 0, na = 0;
        for (j = 0; j < n; j++) { sb += b[j]; kb_ += k[j] * b[j]; }
        for (i = 0; i < n; i++) {
            const double *row = L->c + i * n;
            a[i] = L->sign * dot(row, b, n) - r[i] * sb - kb_ + g * sb;
            na += a[i] * a[i];
        }
        if (!(na > 0)) goto done;
        na = 1.0 / sqrt(na);
        double sa = 0, ra = 0;
        for (i = 0; i < n; i++) { a[i] *= na; sa += a[i]; ra += r[i] * a[i]; }
        for (j = 0; j < n; j++) b[j] = 0;
        for (i = 0; i < n; i++) {
            const double *row = L->c + i * n;
            double ai = L->sign * a[i];
            for (j = 0; j < n; j++) b[j] += ai * row[j];
        }
        s2 = 0;
        for (j = 0; j < n; j++) { b[j] -= k[j] * sa + ra - g * sa; s2 += b[j] * b[j]; }
        if (s2 < RANK_ONE_SHARE * total && s2 < prev * 1.05) goto done;  /* stalled short */
        if (s2 <= prev * (1 + 1e-4)) break;  /* converged */
        prev = s2;
    }
    if (s2 < RANK_ONE_SHARE * total) goto done;
    for (i = 0; i < n; i++) { ka[i].key = a[i]; ka[i].idx = i; kb[i].key = -b[i]; kb[i].idx = i; }
    qsort(ka, (size_t)n, sizeof(Keyed), by_key);
    qsort(kb, (size_t)n, sizeof(Keyed), by_key);
    L->v[kb[0].idx] = 0;
    for (Py_ssize_t t = 0; t + 1 < n; t++)
        L->v[kb[t + 1].idx] = L->v[kb[t].idx] + 0.5 * (ka[t].key + ka[t + 1].key)
                              * (b[kb[t + 1].idx] - b[kb[t].idx]);
    for (j = 0; j < n; j++) L->v[j] += k[j];
    ok = 1;
done:
    free(r);
    free(ka);
    return ok;
}

/* 0: certified optimal; 1: a reduced cost below -tol (or not a permutation). ``tol`` is
 * rel * the larger of max |cost| and max |column dual|: reduced costs are computed from
 * both, so their rounding scales with the larger (on an all-zero cost warm-started from
 * nonzero duals, a tolerance from the costs alone would be zero and fail on rounding). */
static int certify(Lap *L, double rel, double scale) {
    Py_ssize_t n = L->n, i;
    for (i = 0; i < n; i++) {
        double a = fabs(L->v[i]);
        if (a > scale) scale = a;
    }
    double tol = rel * scale;
    for (i = 0; i < n; i++) {
        int64_t xi = L->x[i];
        if (xi < 0 || L->y[xi] != i) return 1;
        double u = M(L, i, xi) - L->v[xi];
        if (row_min(L, i) - u < -tol) return 1;  /* as every column's (a monotone test) */
    }
    return 0;
}

/* Solve one problem: 0 certified, 1 failed check, 2 a non-finite cost (not solved);
 * sets *freed (rows the start left free). The tolerance is rel * max |cost| (or |dual|). */
static int solve_one(Lap *L, int warm, double rel, Py_ssize_t *freed) {
    Py_ssize_t n = L->n;
    double scale = 0.0;
    if (bounds(L->c, n * n, &scale)) return 2;  /* also NaN */
    Py_ssize_t nfree = warm || rank_one_start(L) ? warm_init(L) : cold_init(L);
    *freed = nfree;
    if (augment(L, nfree)) return 1;
    return certify(L, rel, scale);
}

static int take(PyObject *o, Py_buffer *b, int writable) {
    return PyObject_GetBuffer(o, b, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT |
                              (writable ? PyBUF_WRITABLE : 0));
}

PyDoc_STRVAR(solve_doc,
"solve(cost, x, v, status, freed, sign, warm, rel)\n\n"
"Solve a stack of B problems in place: cost float64 [B, n, n] (C order), x int64 [B, n]\n"
"(row -> column; in: the previous answer when warm), v float64 [B, n] (column duals; in:\n"
"the previous ones when warm), status int64 [B] (0 certified, 1 failed check, 2 non-finite),\n"
"freed int64 [B] (rows re-seated). Minimises sign * cost. Runs without the GIL.");

static PyObject *py_solve(PyObject *self, PyObject *args) {
    PyObject *oc, *ox, *ov, *os, *of;
    double sign, rel;
    int warm;
    if (!PyArg_ParseTuple(args, "OOOOOdpd", &oc, &ox, &ov, &os, &of, &sign, &warm, &rel))
        return NULL;
    Py_buffer bc, bx, bv, bs, bf;
    if (take(oc, &bc, 0) < 0) return NULL;
    if (take(ox, &bx, 1) < 0) { PyBuffer_Release(&bc); return NULL; }
    if (take(ov, &bv, 1) < 0) { PyBuffer_Release(&bc); PyBuffer_Release(&bx); return NULL; }
    if (take(os, &bs, 1) < 0) {
        PyBuffer_Release(&bc); PyBuffer_Release(&bx); PyBuffer_Release(&bv); return NULL;
    }
    if (take(of, &bf, 1) < 0) {
        PyBuffer_Release(&bc); PyBuffer_Release(&bx); PyBuffer_Release(&bv);
        PyBuffer_Release(&bs); return NULL;
    }
    PyObject *ret = NULL;
    Py_ssize_t nb = bs.len / 8, n = nb ? bx.len / 8 / nb : 0;
    if (bc.itemsize != 8 || bx.itemsize != 8 || bv.itemsize != 8 || bs.itemsize != 8 ||
        bf.itemsize != 8 || bc.len != nb * n * n * 8 || bx.len != nb * n * 8 ||
        bv.len != nb * n * 8 || bf.len != nb * 8) {
        PyErr_SetString(PyExc_ValueError, "solve: inconsistent buffer sizes");
        goto done;
    }
    if (n > 0) {
        int64_t *work = malloc((size_t)(5 * n) * sizeof(int64_t));
        double *d = malloc((size_t)n * sizeof(double));
        if (!work || !d) { free(work); free(d); PyErr_NoMemory(); goto done; }
        Py_BEGIN_ALLOW_THREADS
        for (Py_ssize_t b = 0; b < nb; b++) {
            Lap L = {(const double *)bc.buf + b * n * n, sign, n,
                     (int64_t *)bx.buf + b * n, work, (double *)bv.buf + b * n,
                     work + n, work + 2 * n, work + 3 * n, work + 4 * n, d};
            Py_ssize_t freed = 0;
            ((int64_t *)bs.buf)[b] = solve_one(&L, warm, rel, &freed);
            ((int64_t *)bf.buf)[b] = freed;
        }
        Py_END_ALLOW_THREADS
        free(work); free(d);
    }
    ret = Py_None; Py_INCREF(ret);
done:
    PyBuffer_Release(&bc); PyBuffer_Release(&bx); PyBuffer_Release(&bv);
    PyBuffer_Release(&bs); PyBuffer_Release(&bf);
    return ret;
}

PyDoc_STRVAR(simd_doc,
"simd(on=None) -> bool\n\n"
"Whether the row scans use AVX2 (the machine has it; on by default there); on=True/False\n"
"switches them (False: plain C everywhere, for tests). Returns the setting before.");

static PyObject *py_simd(PyObject *self, PyObject *args) {
    PyObject *on = Py_None;
    if (!PyArg_ParseTuple(args, "|O", &on)) return NULL;
#ifdef LAP_AVX2
    int before = use_avx2;
    if (on != Py_None) {
        int t = PyObject_IsTrue(on);
        if (t < 0) return NULL;
        use_avx2 = t && __builtin_cpu_supports("avx2");
    }
    return PyBool_FromLong(before);
#else
    (void)on;
    Py_RETURN_FALSE;
#endif
}

static PyMethodDef methods[] = {
    {"solve", py_solve, METH_VARARGS, solve_doc},
    {"simd", py_simd, METH_VARARGS, simd_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_lapjv",
    "Exact warm-started linear assignment (Jonker-Volgenant), certified in float64.",
    -1, methods,
};

PyMODINIT_FUNC PyInit__lapjv(void) {
#ifdef LAP_AVX2
    __builtin_cpu_init();
    use_avx2 = __builtin_cpu_supports("avx2");
#endif
    return PyModule_Create(&module);
}
