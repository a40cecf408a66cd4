// Per-token sparsity on single neurons, on the CPU: top-k (FSparse: the round(density * n_ff) neurons with the
// largest |act(gate x)|) and threshold (CATS: the neurons whose |act(gate x)| reaches the layer's calibrated
// threshold). The kept set changes every token, and ggml graphs have fixed shapes, so the selection and the
// skipped work live in two CPU kernels (ggml custom ops), wired into llama.cpp's FFN through patch 0003's
// builder:
//
//   a   = act(gate x)                   stock ops, gate dense (its repacked kernels)
//   sel = neuron_up(a, x, up)           the kept neurons n (ascending) and h[n] = a[n] * (up[n] . x)
//   y   = neuron_sum(neuron_down(sel, down_nm))   y = sum over kept n of h[n] * down_nm[n]
//
// up is the GGUF's ffn_up read in place (its rows are neurons); down_nm is the neuron-major copy of ffn_down
// (neuron_down.cpp: row n = neuron n's column). A skipped neuron is a row of each never read. Work splits as in
// ggml's own ops, with no atomics: neuron_up over the kept list (every thread makes the same selection, n_ff
// compares, rather than wait at a barrier for one), neuron_down over the kept rows too (each thread accumulates
// a partial y over its slice, in L1), neuron_sum over y's columns (adds the partials). The graph's barrier
// between the nodes orders them.
//
// Calibration uses the same hook on dense batches: the FFN is built from stock ops, with a pass-through node on
// act(gate x) that adds every token's |act(gate x)| to a per-layer histogram (sirius_score_bin).

#include "sparse.h"

#include "ggml-cpu.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define SIRIUS_X86 1
#endif

namespace sirius {

namespace {

// sel's layout (a F32 tensor of sel_size(n_ff) values): int32 count, then n_ff int32 neuron ids (ascending,
// `count` used), then n_ff floats h.
constexpr int64_t kSelHeader = 16;  // values before the ids (the count, padded to 64 bytes)
int64_t sel_size(int64_t n_ff) { return kSelHeader + 2 * n_ff; }

// Prefetch [p, p + bytes) into L2 (prefetcht1 on x86: locality 2), line by line.
inline void prefetch_l2(const uint8_t * p, size_t bytes) {
    for (size_t o = 0; o < bytes; o += 64) __builtin_prefetch(p + o, 0, 2);
    __builtin_prefetch(p + bytes - 1, 0, 2);
}

// Rows of the neuron-major down that the Q4_0 kernel rounds together (its coefficients' int8 scale is per group
// and block); neuron_down gives each thread whole groups, so the rounding does not depend on the thread count.
constexpr int kRowGroup = 16;

// SIRIUS_NEURON_KERNELS=loads-only (a measurement, never for use): both kernels read their kept rows in the same
// order, with the same prefetches, and skip their arithmetic (up's dot products, down's axpy; y stays 0), so a
// sparse decode's speed is the ceiling that reading scattered rows sets on this machine. The outputs are
// meaningless, and a warning says so on stderr. Read once per process. NOTES, "The ceiling with free arithmetic".
bool loads_only() {
    static const bool v = [] {
        const char * e = getenv("SIRIUS_NEURON_KERNELS");
        const bool on = e && strcmp(e, "loads-only") == 0;
        if (on) {
            fprintf(stderr, "sirius-local: SIRIUS_NEURON_KERNELS=loads-only: the per-token sparse kernels skip their "
                            "arithmetic (a measurement of the read ceiling); sparse outputs are meaningless\n");
        }
        return on;
    }();
    return v;
}

// Every byte of [p, p + bytes) loaded (8 at a time), folded into a value the caller keeps (loads-only).
uint64_t load_row(const uint8_t * p, size_t bytes) {
    uint64_t acc = 0;
    for (size_t o = 0; o + 8 <= bytes; o += 8) {
        uint64_t w;
        memcpy(&w, p + o, 8);
        acc ^= w;
    }
    return acc;
}

inline uint32_t abs_bits(float v) {
    uint32_t u;
    memcpy(&u, &v, 4);
    return u & 0x7fffffffu;
}

}  // namespace

// Top-k by partial selection: the k neurons with the largest |a| (ties to the lower index), ascending. A
// histogram of the top 12 bits of |a| (non-negative floats order as their bit patterns) finds the bin holding
// the k-th largest; only that bin's values are ranked (nth_element); one more pass emits the kept ids in order.
void select_topk(const float * a, int64_t n, int64_t k, std::vector<int32_t> & out, std::vector<uint32_t> & keys) {
    out.clear();
    if (k >= n) {
        for (int64_t i = 0; i < n; ++i) out.push_back((int32_t) i);
        return;
    }
    if (k <= 0) return;
    keys.resize(n);
    uint32_t hist[4096] = {0};
    for (int64_t i = 0; i < n; ++i) {
        keys[i] = abs_bits(a[i]);
        hist[keys[i] >> 19]++;
    }
    int64_t above = 0;  // values in bins above the pivot bin
    int bin = 4095;
    for (; bin > 0 && above + hist[bin] < (uint32_t) k; --bin) above += hist[bin];
    std::vector<uint32_t> cand;
    cand.reserve(hist[bin]);
    for (int64_t i = 0; i < n; ++i) {
        if ((int) (keys[i] >> 19) == bin) cand.push_back(keys[i]);
    }
    const int64_t need = k - above;  // taken from the pivot bin: its `need` largest
    std::nth_element(cand.begin(), cand.begin() + (need - 1), cand.end(), std::greater<uint32_t>());
    const uint32_t t = cand[need - 1];
    int64_t ties = need;  // values equal to t that are kept: need minus the pivot bin's values above t
    for (uint32_t c : cand) ties -= c > t;
    for (int64_t i = 0; i < n; ++i) {
        if (keys[i] > t || (keys[i] == t && ties-- > 0)) out.push_back((int32_t) i);
    }
}

namespace {

void select_threshold(const float * a, int64_t n, float threshold, std::vector<int32_t> & out) {
    out.clear();
    for (int64_t i = 0; i < n; ++i) {
        if (std::fabs(a[i]) >= threshold) out.push_back((int32_t) i);
    }
}

// src: a [n_ff], x [n_embd], up [n_embd, n_ff]; dst sel.
void neuron_up(ggml_tensor * dst, int ith, int nth, void * userdata) {
    auto * L = static_cast<NeuronLayer *>(userdata);
    const ggml_tensor * a = dst->src[0], * x = dst->src[1], * up = dst->src[2];
    const int64_t n_embd = up->ne[0], n_ff = up->ne[1];
    const float * av = static_cast<const float *>(a->data);

    thread_local std::vector<int32_t> kept, runs;
    thread_local std::vector<uint32_t> keys;
    thread_local std::vector<float> run_score;
    thread_local std::vector<uint8_t> xq;
    if (L->k > 0 && L->run > 1) {
        // Runs of R consecutive neurons, ranked by their sum of |a| (a measurement: contiguous R-row runs of
        // up and down against single neurons' acceptance; NOTES, "Runs of neurons").
        const int64_t R = L->run, n_run = n_ff / R;
        run_score.assign(n_run, 0.0f);
        for (int64_t i = 0; i < n_run * R; ++i) run_score[i / R] += std::fabs(av[i]);
        select_topk(run_score.data(), n_run, std::max<int64_t>(1, (L->k + R / 2) / R), runs, keys);
        kept.clear();
        for (int32_t r : runs) {
            for (int64_t i = 0; i < R; ++i) kept.push_back((int32_t) (r * R + i));
        }
    } else if (L->k > 0) {
        select_topk(av, n_ff, L->k, kept, keys);
    } else {
        select_threshold(av, n_ff, L->threshold, kept);
    }

    const ggml_type_traits_cpu * tt = ggml_get_type_traits_cpu(up->type);
    const void * xv = x->data;
    if (tt->vec_dot_type != GGML_TYPE_F32) {
        xq.resize(ggml_row_size(tt->vec_dot_type, n_embd));
        ggml_get_type_traits_cpu(tt->vec_dot_type)->from_float(static_cast<const float *>(x->data), xq.data(), n_embd);
        xv = xq.data();
    }
    const size_t row = ggml_row_size(up->type, n_embd);
    const uint8_t * base = static_cast<const uint8_t *>(up->data);
    float * sel = static_cast<float *>(dst->data);
    int32_t * ids = reinterpret_cast<int32_t *>(sel + kSelHeader);
    float * h = sel + kSelHeader + n_ff;
    const int64_t c = (int64_t) kept.size();
    const int64_t j0 = c * ith / nth, j1 = c * (ith + 1) / nth;
    // A kept row is a short run at a scattered address, too short for the hardware prefetchers: each is
    // fetched kUpAhead rows ahead, into L2 (prefetch_l2: into L1, the core's few L1 miss buffers capped the
    // scattered reads at ~13 GB/s on the Zen 4 VM; into L2, ~20; NOTES, "Prefetching into L2").
    constexpr int64_t kUpAhead = 16;
    const bool only_loads = loads_only();
    for (int64_t j = j0; j < std::min(j1, j0 + kUpAhead); ++j) prefetch_l2(base + (size_t) kept[j] * row, row);
    for (int64_t j = j0; j < j1; ++j) {
        if (j + kUpAhead < j1) prefetch_l2(base + (size_t) kept[j + kUpAhead] * row, row);
        const int32_t n = kept[j];
        float u;
        if (only_loads) {
            u = (float) (load_row(base + (size_t) n * row, row) & 1);
        } else {
            tt->vec_dot((int) n_embd, &u, 0, base + (size_t) n * row, 0, xv, 0, 1);
        }
        ids[j] = n;
        h[j] = u * av[n];
    }
    if (ith == 0) {
        const int32_t count = (int32_t) c;
        memcpy(sel, &count, sizeof(count));
        L->kept += c;
        L->seen += n_ff;
        sirius_session * s = L->s;
        if (s && s->record_topk && L->il < (int32_t) s->topk_ids.size()) s->topk_ids[L->il] = kept;
    }
}

// The down kernels: acc[0, nb * 32) += sum over j < n of h[j] * (row j's 32-column blocks b0 .. b0 + nb), where
// rows[j] is the start of a row of nblk blocks. Row layouts (written by neuron_down.cpp):
//   Q4_0: the row's nblk fp16 scales d first, then its nblk x 16 bytes of nibbles q (ggml's block_q4_0 fields,
//         split, so a run of scales is one vector load): x = d * (q - 8), low nibbles first within a block;
//   Q8_0: ggml's block_q8_0 in order (x = d * q); F16, F32: plain values.
// Scalar versions first (any CPU; SIRIUS_AXPY=scalar forces them for comparisons), then AVX2 ones, then Q4_0 on
// AVX-512 VNNI (SIRIUS_AXPY=avx2 takes the AVX2 one instead).
struct BlockQ8 { uint16_t d; int8_t qs[32]; };  // ggml's block_q8_0
static_assert(sizeof(BlockQ8) == 34, "ggml's block_q8_0 layout");

void axpy_q4_0(const uint8_t * const * rows, const float * h, int64_t n, int64_t nblk, int64_t b0, int64_t nb, float * acc) {
    for (int64_t j = 0; j < n; ++j) {
        const uint16_t * d = reinterpret_cast<const uint16_t *>(rows[j]) + b0;
        const uint8_t * qs = rows[j] + 2 * nblk + 16 * b0;
        for (int64_t b = 0; b < nb; ++b) {
            const float s = h[j] * ggml_fp16_to_fp32(d[b]);
            float * o = acc + b * 32;
            for (int i = 0; i < 16; ++i) {
                o[i] += s * (float) ((qs[16 * b + i] & 15) - 8);
                o[i + 16] += s * (float) ((qs[16 * b + i] >> 4) - 8);
            }
        }
    }
}

void axpy_q8_0(const uint8_t * const * rows, const float * h, int64_t n, int64_t, int64_t b0, int64_t nb, float * acc) {
    for (int64_t j = 0; j < n; ++j) {
        const BlockQ8 * r = reinterpret_cast<const BlockQ8 *>(rows[j]) + b0;
        for (int64_t b = 0; b < nb; ++b) {
            const float s = h[j] * ggml_fp16_to_fp32(r[b].d);
            for (int i = 0; i < 32; ++i) acc[b * 32 + i] += s * (float) r[b].qs[i];
        }
    }
}

void axpy_f16(const uint8_t * const * rows, const float * h, int64_t n, int64_t, int64_t b0, int64_t nb, float * acc) {
    for (int64_t j = 0; j < n; ++j) {
        const ggml_fp16_t * r = reinterpret_cast<const ggml_fp16_t *>(rows[j]) + 32 * b0;
        for (int64_t i = 0; i < nb * 32; ++i) acc[i] += h[j] * ggml_fp16_to_fp32(r[i]);
    }
}

void axpy_f32(const uint8_t * const * rows, const float * h, int64_t n, int64_t, int64_t b0, int64_t nb, float * acc) {
    for (int64_t j = 0; j < n; ++j) {
        const float * r = reinterpret_cast<const float *>(rows[j]) + 32 * b0;
        for (int64_t i = 0; i < nb * 32; ++i) acc[i] += h[j] * r[i];
    }
}

#ifdef SIRIUS_X86
// A kept row is a short run at a scattered address, too short for the hardware prefetchers to ramp up on, so
// the kernels prefetch the rows they take next, into L2 (prefetch_l2).

// Row j of a Q4_0 kernel's list (if there is one): its runs of scales and of nibbles, into L2. (A macro: GCC
// emitted none of these prefetches from a lambda or a helper function called in the target("avx2") kernel.)
#define SIRIUS_FETCH_ROW(j)                                                                                       \
    do {                                                                                                          \
        const int64_t fj = (j);                                                                                   \
        if (fj < n) {                                                                                             \
            prefetch_l2(rows[fj] + d_off, 2 * (size_t) nb);                                                       \
            prefetch_l2(rows[fj] + q_off, 16 * (size_t) nb);                                                      \
        }                                                                                                         \
    } while (0)

// Row group j0's R row pointers (a partial last group repeats its last row, whose coefficient is then 0); returns
// how many rows are real.
template <int R> inline int64_t group_rows(const uint8_t * const * rows, int64_t j0, int64_t n, const uint8_t * (&rr)[R]) {
    const int64_t m = std::min<int64_t>(R, n - j0);
    for (int r = 0; r < R; ++r) rr[r] = rows[j0 + std::min<int64_t>(r, m - 1)];
    return m;
}

// One block's float update from its int16 column sums (columns 0-7, 8-15, 16-23, 24-31): acc += (sums - 8 x the
// sum of the coefficients) x step. (A function, not a lambda: a lambda does not inherit target("avx2").)
__attribute__((target("avx2,fma,f16c"))) inline void q4_0_update(float * o, __m128i c0_7, __m128i c8_15, __m128i c16_23,
                                                                  __m128i c24_31, int32_t gsum, float step) {
    const __m256i bias = _mm256_set1_epi32(-8 * gsum);
    const __m256 st = _mm256_set1_ps(step);
    const __m128i c[4] = {c0_7, c8_15, c16_23, c24_31};
    for (int i = 0; i < 4; ++i) {
        const __m256 v = _mm256_cvtepi32_ps(_mm256_add_epi32(_mm256_cvtepi16_epi32(c[i]), bias));
        _mm256_storeu_ps(o + 8 * i, _mm256_fmadd_ps(v, st, _mm256_loadu_ps(o + 8 * i)));
    }
}

// Both Q4_0 kernels' coefficients for one row group (rr, with h its rows' coefficients; rows past m are padding):
// per block b of nb (padded with zeros to nb8, a multiple of 8), g[r] = h[r] * d[r][b] rounded to int8 against the
// group's largest |g| (qi[r * nb8 + b]), their sum gsum[b], and the rounding step (the largest |g| / 127).
struct Q4_0Coefficients {
    int64_t nb8 = 0;
    std::vector<float> g, step;
    std::vector<int32_t> qi, gsum;
};

__attribute__((target("avx2,fma,f16c"))) inline void q4_0_coefficients(const uint8_t * const (&rr)[kRowGroup], const float * h,
                                                                        int64_t m, size_t d_off, int64_t nb, Q4_0Coefficients & c) {
    constexpr int R = kRowGroup;
    const int64_t nb8 = c.nb8 = (nb + 7) / 8 * 8;
    c.g.resize((size_t) R * nb8);
    c.qi.resize((size_t) R * nb8);
    c.step.assign(nb8, 0.0f);  // first each block's largest |g|
    c.gsum.resize(nb8);
    const __m256 sign = _mm256_set1_ps(-0.0f);
    float * gmax = c.step.data();
    for (int r = 0; r < R; ++r) {
        const float hr = r < m ? h[r] : 0.0f;
        const uint16_t * d = reinterpret_cast<const uint16_t *>(rr[r] + d_off);
        float * gr = c.g.data() + (size_t) r * nb8;
        int64_t b = 0;
        for (; b + 8 <= nb; b += 8) {
            const __m256 v = _mm256_mul_ps(_mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i *>(d + b))), _mm256_set1_ps(hr));
            _mm256_storeu_ps(gr + b, v);
            _mm256_storeu_ps(gmax + b, _mm256_max_ps(_mm256_loadu_ps(gmax + b), _mm256_andnot_ps(sign, v)));
        }
        for (; b < nb; ++b) {
            const float v = hr * _cvtsh_ss(d[b]);
            gr[b] = v;
            gmax[b] = std::max(gmax[b], std::fabs(v));
        }
        std::fill(gr + nb, gr + nb8, 0.0f);
    }
    for (int64_t b = 0; b < nb8; b += 8) {
        const __m256 mx = _mm256_loadu_ps(gmax + b);
        const __m256 inv = _mm256_and_ps(_mm256_div_ps(_mm256_set1_ps(127.0f), mx), _mm256_cmp_ps(mx, _mm256_setzero_ps(), _CMP_GT_OQ));
        __m256i sum = _mm256_setzero_si256();
        for (int r = 0; r < R; ++r) {
            const __m256i q = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(c.g.data() + (size_t) r * nb8 + b), inv));
            _mm256_storeu_si256(reinterpret_cast<__m256i *>(c.qi.data() + (size_t) r * nb8 + b), q);
            sum = _mm256_add_epi32(sum, q);
        }
        _mm256_storeu_si256(reinterpret_cast<__m256i *>(c.gsum.data() + b), sum);
        _mm256_storeu_ps(gmax + b, _mm256_mul_ps(mx, _mm256_set1_ps(1.0f / 127.0f)));  // now the step
    }
}

// Q4_0 in integer arithmetic, as ggml's own Q4_0 x Q8_0 dot product works: per group of kRowGroup = 16 rows and
// block b, the coefficients g[r] = h[r] * d[r][b] are rounded to int8 against the group's largest |g| (ggml rounds the
// activations of a dense product to int8 per 32 values in the same way), and each pair of rows is one
// maddubs of their interleaved nibbles (unsigned, 0..15) with the pair's two int8 coefficients: 32 products per
// instruction. Sixteen rows' int16 sums stay below 8 x 2 x 15 x 127 = 30480; the "- 8" is one correction per
// block, -8 times the sum of the group's int8 coefficients. Blocks go two at a time: a row's 32 bytes of
// nibbles for blocks b and b + 1 are one load, and the 256-bit lanes are the two blocks.
__attribute__((target("avx2,fma,f16c"))) void axpy_q4_0_avx2(const uint8_t * const * rows, const float * h, int64_t n,
                                                             int64_t nblk, int64_t b0, int64_t nb, float * acc) {
    constexpr int R = kRowGroup, P = R / 2;
    thread_local Q4_0Coefficients c;
    thread_local std::vector<uint8_t> w;  // per pair of blocks and pair of rows: the maddubs operand, 32 bytes
    const int64_t nbp = nb / 2;           // pairs of blocks; an odd last block goes alone
    w.resize((size_t) (nbp + 1) * P * 32);
    const __m128i m4 = _mm_set1_epi8(0x0f);
    const __m256i m4w = _mm256_set1_epi8(0x0f), m8 = _mm256_set1_epi32(0xff);
    const size_t d_off = 2 * (size_t) b0, q_off = 2 * (size_t) nblk + 16 * (size_t) b0;
    // Prefetch (into L2): the next group's rows, row after row, spread over this group's pairs of blocks (without
    // it the kernel takes ~2x as long: its 16 rows are read 16 bytes of each in turn, too short a run for the
    // hardware prefetchers).
    for (int64_t j = 0; j < std::min<int64_t>(R, n); ++j) SIRIUS_FETCH_ROW(j);
    const int64_t steps = std::max<int64_t>(nbp, 1);
    for (int64_t j0 = 0; j0 < n; j0 += R) {
        const uint8_t * rr[R];
        const int64_t m = group_rows(rows, j0, n, rr);
        // 1-2. the int8 coefficients, their sums and each block's step
        q4_0_coefficients(rr, h + j0, m, d_off, nb, c);
        const int64_t nb8 = c.nb8;
        const int32_t * qi = c.qi.data(), * gsum = c.gsum.data();
        const float * gmax = c.step.data();
        // 3. the maddubs operands: for pair of rows p and pair of blocks bp, pair p's two int8 coefficients 8 times
        //    for block 2 bp (low 128 bits), then 8 times for block 2 bp + 1 (high); an odd last block's in both halves
        for (int p = 0; p < P; ++p) {
            const int32_t * q1 = qi + (size_t) (2 * p) * nb8, * q2 = qi + (size_t) (2 * p + 1) * nb8;
            alignas(32) int32_t v[8];
            for (int64_t b = 0; b < nb; b += 8) {
                const __m256i x1 = _mm256_loadu_si256(reinterpret_cast<const __m256i *>(q1 + b));
                const __m256i x2 = _mm256_loadu_si256(reinterpret_cast<const __m256i *>(q2 + b));
                _mm256_store_si256(reinterpret_cast<__m256i *>(v), _mm256_or_si256(_mm256_and_si256(x1, m8),
                                                                                    _mm256_slli_epi32(_mm256_and_si256(x2, m8), 8)));
                for (int64_t i = 0; i < 8 && b + i < nb; i += 2) {
                    const short lo = (short) v[i], hi = (short) (b + i + 1 < nb ? v[i + 1] : v[i]);
                    _mm256_storeu_si256(reinterpret_cast<__m256i *>(w.data() + 32 * ((size_t) ((b + i) / 2) * P + p)),
                                        _mm256_set_m128i(_mm_set1_epi16(hi), _mm_set1_epi16(lo)));
                }
            }
        }
        // 4. per pair of blocks: the 16 rows' products in int16 (lanes: the two blocks), then each block's float update
        for (int64_t bp = 0; bp < nbp; ++bp) {
            for (int64_t r = R * bp / steps; r < R * (bp + 1) / steps; ++r) SIRIUS_FETCH_ROW(j0 + R + r);
            const int64_t b = 2 * bp;
            __m256i s0 = _mm256_setzero_si256(), s1 = _mm256_setzero_si256(), s2 = _mm256_setzero_si256(), s3 = _mm256_setzero_si256();
            const uint8_t * wp = w.data() + 32 * (size_t) bp * P;
            for (int p = 0; p < P; ++p) {
                const __m256i q1 = _mm256_loadu_si256(reinterpret_cast<const __m256i *>(rr[2 * p] + q_off + 16 * b));
                const __m256i q2 = _mm256_loadu_si256(reinterpret_cast<const __m256i *>(rr[2 * p + 1] + q_off + 16 * b));
                // [block b | block b + 1]: columns 0-15 (low nibbles), columns 16-31 (high nibbles)
                const __m256i l1 = _mm256_and_si256(q1, m4w), h1 = _mm256_and_si256(_mm256_srli_epi16(q1, 4), m4w);
                const __m256i l2 = _mm256_and_si256(q2, m4w), h2 = _mm256_and_si256(_mm256_srli_epi16(q2, 4), m4w);
                const __m256i wv = _mm256_loadu_si256(reinterpret_cast<const __m256i *>(wp + 32 * p));
                s0 = _mm256_add_epi16(s0, _mm256_maddubs_epi16(_mm256_unpacklo_epi8(l1, l2), wv));  // columns 0-7
                s1 = _mm256_add_epi16(s1, _mm256_maddubs_epi16(_mm256_unpackhi_epi8(l1, l2), wv));  // 8-15
                s2 = _mm256_add_epi16(s2, _mm256_maddubs_epi16(_mm256_unpacklo_epi8(h1, h2), wv));  // 16-23
                s3 = _mm256_add_epi16(s3, _mm256_maddubs_epi16(_mm256_unpackhi_epi8(h1, h2), wv));  // 24-31
            }
            q4_0_update(acc + b * 32, _mm256_castsi256_si128(s0), _mm256_castsi256_si128(s1), _mm256_castsi256_si128(s2),
                        _mm256_castsi256_si128(s3), gsum[b], gmax[b]);
            q4_0_update(acc + (b + 1) * 32, _mm256_extracti128_si256(s0, 1), _mm256_extracti128_si256(s1, 1),
                        _mm256_extracti128_si256(s2, 1), _mm256_extracti128_si256(s3, 1), gsum[b + 1], gmax[b + 1]);
        }
        if (nb % 2) {  // an odd last block alone: 16-byte loads, lanes = its two column halves
            if (nbp == 0) {
                for (int64_t r = 0; r < R; ++r) SIRIUS_FETCH_ROW(j0 + R + r);
            }
            const int64_t b = nb - 1;
            __m256i s0 = _mm256_setzero_si256(), s1 = _mm256_setzero_si256();
            const uint8_t * wp = w.data() + 32 * (size_t) nbp * P;
            for (int p = 0; p < P; ++p) {
                const __m128i q1 = _mm_loadu_si128(reinterpret_cast<const __m128i *>(rr[2 * p] + q_off + 16 * b));
                const __m128i q2 = _mm_loadu_si128(reinterpret_cast<const __m128i *>(rr[2 * p + 1] + q_off + 16 * b));
                const __m256i a1 = _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(q1, 4), m4), _mm_and_si128(q1, m4));
                const __m256i a2 = _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(q2, 4), m4), _mm_and_si128(q2, m4));
                const __m256i wv = _mm256_loadu_si256(reinterpret_cast<const __m256i *>(wp + 32 * p));
                s0 = _mm256_add_epi16(s0, _mm256_maddubs_epi16(_mm256_unpacklo_epi8(a1, a2), wv));  // columns 0-7 | 16-23
                s1 = _mm256_add_epi16(s1, _mm256_maddubs_epi16(_mm256_unpackhi_epi8(a1, a2), wv));  // columns 8-15 | 24-31
            }
            q4_0_update(acc + b * 32, _mm256_castsi256_si128(s0), _mm256_castsi256_si128(s1), _mm256_extracti128_si256(s0, 1),
                        _mm256_extracti128_si256(s1, 1), gsum[b], gmax[b]);
        }
    }
}

// The same products with AVX-512 VNNI: one vpdpbusd adds four rows' products per column (16 columns per
// instruction, int32 lanes), so each block takes, per quad of rows, one 64-byte gather of the four rows' 16 bytes
// of nibbles, a byte permutation (vpermb) that puts a column's four nibbles in one lane, and two vpdpbusd (low
// nibbles: columns 0-15, high: 16-31) against the quad's four int8 coefficients broadcast. The int8 coefficients,
// integer sums and float update are the AVX2 kernel's (the sums are exact in both), so the outputs are
// bit-identical to it; it does about half the AVX2 kernel's instructions per row, and down's arithmetic, not its
// reads, is what a per-token step waits on (NOTES, "The ceiling with free arithmetic").
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"  // GCC 12's AVX-512 headers (_mm512_undefined_*), a false alarm
__attribute__((target("avx512f,avx512bw,avx512vl,avx512vbmi,avx512vnni,avx2,fma,f16c"))) void axpy_q4_0_vnni(
    const uint8_t * const * rows, const float * h, int64_t n, int64_t nblk, int64_t b0, int64_t nb, float * acc) {
    constexpr int R = kRowGroup, Q = R / 4;
    thread_local Q4_0Coefficients c;
    thread_local std::vector<int32_t> w4;  // w4[t * nb8 + b]: quad t's four int8 coefficients for block b
    const __m512i m4 = _mm512_set1_epi8(0x0f);
    const __m256i m8 = _mm256_set1_epi32(0xff);
    // out byte 4c + k = in byte 16k + c: column c's nibbles from the quad's rows k = 0..3
    alignas(64) int8_t perm[64];
    for (int col = 0; col < 16; ++col) {
        for (int k = 0; k < 4; ++k) perm[4 * col + k] = (int8_t) (16 * k + col);
    }
    const __m512i idx = _mm512_load_si512(perm);
    const size_t d_off = 2 * (size_t) b0, q_off = 2 * (size_t) nblk + 16 * (size_t) b0;
    for (int64_t j = 0; j < std::min<int64_t>(R, n); ++j) SIRIUS_FETCH_ROW(j);
    for (int64_t j0 = 0; j0 < n; j0 += R) {
        const uint8_t * rr[R];
        const int64_t m = group_rows(rows, j0, n, rr);
        // 1-2. the int8 coefficients, their sums and each block's step (the AVX2 kernel's), then each quad's four
        //      packed in a 32-bit value
        q4_0_coefficients(rr, h + j0, m, d_off, nb, c);
        const int64_t nb8 = c.nb8;
        const int32_t * gsum = c.gsum.data();
        const float * step = c.step.data();
        w4.resize((size_t) Q * nb8);
        for (int t = 0; t < Q; ++t) {
            for (int64_t b = 0; b < nb8; b += 8) {
                __m256i quad = _mm256_setzero_si256();
                for (int k = 0; k < 4; ++k) {
                    const __m256i q = _mm256_loadu_si256(reinterpret_cast<const __m256i *>(c.qi.data() + (size_t) (4 * t + k) * nb8 + b));
                    quad = _mm256_or_si256(quad, _mm256_slli_epi32(_mm256_and_si256(q, m8), 8 * k));
                }
                _mm256_storeu_si256(reinterpret_cast<__m256i *>(w4.data() + (size_t) t * nb8 + b), quad);
            }
        }
        // 3. per block: the 16 rows' products in int32, then the float update (the next group's rows fetched
        //    meanwhile, spread over the blocks)
        for (int64_t b = 0; b < nb; ++b) {
            for (int64_t r = R * b / nb; r < R * (b + 1) / nb; ++r) SIRIUS_FETCH_ROW(j0 + R + r);
            __m512i slo = _mm512_setzero_si512(), shi = _mm512_setzero_si512();
            for (int t = 0; t < Q; ++t) {
                const size_t o = q_off + 16 * (size_t) b;
                __m512i z = _mm512_castsi128_si512(_mm_loadu_si128(reinterpret_cast<const __m128i *>(rr[4 * t] + o)));
                z = _mm512_inserti32x4(z, _mm_loadu_si128(reinterpret_cast<const __m128i *>(rr[4 * t + 1] + o)), 1);
                z = _mm512_inserti32x4(z, _mm_loadu_si128(reinterpret_cast<const __m128i *>(rr[4 * t + 2] + o)), 2);
                z = _mm512_inserti32x4(z, _mm_loadu_si128(reinterpret_cast<const __m128i *>(rr[4 * t + 3] + o)), 3);
                const __m512i wv = _mm512_set1_epi32(w4[(size_t) t * nb8 + b]);
                slo = _mm512_dpbusd_epi32(slo, _mm512_permutexvar_epi8(idx, _mm512_and_si512(z, m4)), wv);
                shi = _mm512_dpbusd_epi32(shi, _mm512_permutexvar_epi8(idx, _mm512_and_si512(_mm512_srli_epi16(z, 4), m4)), wv);
            }
            const __m512i bias = _mm512_set1_epi32(-8 * gsum[b]);
            const __m512 st = _mm512_set1_ps(step[b]);
            float * o = acc + b * 32;
            _mm512_storeu_ps(o, _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_add_epi32(slo, bias)), st, _mm512_loadu_ps(o)));
            _mm512_storeu_ps(o + 16, _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_add_epi32(shi, bias)), st, _mm512_loadu_ps(o + 16)));
        }
    }
}
#pragma GCC diagnostic pop

#undef SIRIUS_FETCH_ROW

// Q8_0 in float: four rows at a time, so each 32-float block of acc is loaded and stored once per four rows.
__attribute__((target("avx2,fma,f16c"))) void axpy_q8_0_avx2(const uint8_t * const * rows, const float * h, int64_t n,
                                                             int64_t, int64_t b0, int64_t nb, float * acc) {
    const size_t off = sizeof(BlockQ8) * (size_t) b0, bytes = sizeof(BlockQ8) * (size_t) nb;
    for (int64_t j = 0; j < std::min<int64_t>(n, 16); ++j) prefetch_l2(rows[j] + off, bytes);
    for (int64_t j = 0; j < n; j += 4) {
        for (int64_t q = j + 16; q < std::min<int64_t>(n, j + 20); ++q) prefetch_l2(rows[q] + off, bytes);
        const int64_t m = std::min<int64_t>(4, n - j);
        const BlockQ8 * r[4];
        float hj[4];
        for (int q = 0; q < 4; ++q) {
            r[q] = reinterpret_cast<const BlockQ8 *>(rows[j + std::min<int64_t>(q, m - 1)]) + b0;
            hj[q] = q < m ? h[j + q] : 0.0f;
        }
        for (int64_t b = 0; b < nb; ++b) {
            float * o = acc + b * 32;
            __m256 a0 = _mm256_loadu_ps(o), a1 = _mm256_loadu_ps(o + 8), a2 = _mm256_loadu_ps(o + 16), a3 = _mm256_loadu_ps(o + 24);
            for (int q = 0; q < 4; ++q) {
                const __m256 vs = _mm256_set1_ps(hj[q] * _cvtsh_ss(r[q][b].d));
                const __m128i q0 = _mm_loadu_si128(reinterpret_cast<const __m128i *>(r[q][b].qs));
                const __m128i q1 = _mm_loadu_si128(reinterpret_cast<const __m128i *>(r[q][b].qs + 16));
                a0 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q0)), vs, a0);
                a1 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(q0, 8))), vs, a1);
                a2 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q1)), vs, a2);
                a3 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(q1, 8))), vs, a3);
            }
            _mm256_storeu_ps(o, a0);
            _mm256_storeu_ps(o + 8, a1);
            _mm256_storeu_ps(o + 16, a2);
            _mm256_storeu_ps(o + 24, a3);
        }
    }
}

__attribute__((target("avx2,fma,f16c"))) void axpy_f16_avx2(const uint8_t * const * rows, const float * h, int64_t n,
                                                            int64_t, int64_t b0, int64_t nb, float * acc) {
    for (int64_t j = 0; j < n; ++j) {
        if (j + 8 < n) prefetch_l2(rows[j + 8] + 64 * b0, 64 * (size_t) nb);
        const __m256 vs = _mm256_set1_ps(h[j]);
        const uint16_t * r = reinterpret_cast<const uint16_t *>(rows[j]) + 32 * b0;
        for (int64_t i = 0; i < nb * 32; i += 8) {
            const __m256 w = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i *>(r + i)));
            _mm256_storeu_ps(acc + i, _mm256_fmadd_ps(w, vs, _mm256_loadu_ps(acc + i)));
        }
    }
}

bool has_avx2() {
    static const bool v = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
    return v;
}

bool has_avx512_vnni() {
    static const bool v = has_avx2() && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                          __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vbmi") && __builtin_cpu_supports("avx512vnni");
    return v;
}
#endif

using AxpyFn = void (*)(const uint8_t * const *, const float *, int64_t, int64_t, int64_t, int64_t, float *);

AxpyFn axpy_for(ggml_type t) {
#ifdef SIRIUS_X86
    // SIRIUS_AXPY=scalar | avx2 (comparisons): the portable kernels, or AVX2 where AVX-512 VNNI would be taken
    static const char * forced = getenv("SIRIUS_AXPY");
    static const bool scalar = forced && strcmp(forced, "scalar") == 0;
    static const bool vnni = has_avx512_vnni() && !(forced && strcmp(forced, "avx2") == 0);
    if (vnni && !scalar && t == GGML_TYPE_Q4_0) return axpy_q4_0_vnni;
    if (has_avx2() && !scalar) {
        switch (t) {
            case GGML_TYPE_Q4_0: return axpy_q4_0_avx2;
            case GGML_TYPE_Q8_0: return axpy_q8_0_avx2;
            case GGML_TYPE_F16: return axpy_f16_avx2;
            default: break;
        }
    }
#endif
    switch (t) {
        case GGML_TYPE_Q4_0: return axpy_q4_0;
        case GGML_TYPE_Q8_0: return axpy_q8_0;
        case GGML_TYPE_F16: return axpy_f16;
        case GGML_TYPE_F32: return axpy_f32;
        default: return nullptr;
    }
}

// src: sel, down_nm [n_embd, n_ff]; dst: partial sums [n_embd, kDownParts]. The kept rows split over the threads
// in slices of whole row groups (kRowGroup); thread ith < min(nth, kDownParts) accumulates its slice's rows over
// the whole width of y (in L1) into partial row ith; neuron_sum adds the partials. Each thread reads whole rows,
// one after the other: splitting columns instead made both threads touch every kept row's lines (measured ~1.4x
// slower in order and ~1.3x on a random half: benchmarks/scattered_reads.cpp; NOTES, "Prefetching into L2").
constexpr int kDownParts = 32;

void neuron_down(ggml_tensor * dst, int ith, int nth, void *) {
    const ggml_tensor * sel_t = dst->src[0], * down = dst->src[1];
    const int64_t n_embd = down->ne[0], n_ff = down->ne[1], nblk = n_embd / 32;
    const float * sel = static_cast<const float *>(sel_t->data);
    int32_t count;
    memcpy(&count, sel, sizeof(count));
    const int32_t * ids = reinterpret_cast<const int32_t *>(sel + kSelHeader);
    const float * h = sel + kSelHeader + n_ff;
    const int parts = std::min(nth, kDownParts);
    if (ith >= parts) return;
    auto slice = [&](int p) {
        return std::min<int64_t>(count, (count * p / parts + kRowGroup - 1) / kRowGroup * kRowGroup);
    };
    const int64_t j0 = slice(ith), j1 = slice(ith + 1);
    float * y = static_cast<float *>(dst->data) + (size_t) ith * n_embd;
    std::fill(y, y + n_embd, 0.0f);
    if (j1 <= j0) return;
    thread_local std::vector<const uint8_t *> rows;
    const size_t row = ggml_row_size(down->type, n_embd);
    const uint8_t * base = static_cast<const uint8_t *>(down->data);
    rows.resize(j1 - j0);
    for (int64_t q = j0; q < j1; ++q) rows[q - j0] = base + (size_t) ids[q] * row;
    if (loads_only()) {  // the rows in the same order, each fetched one row group ahead like the kernels'
        const int64_t n = j1 - j0;
        uint64_t acc = 0;
        for (int64_t q = 0; q < std::min<int64_t>(n, kRowGroup); ++q) prefetch_l2(rows[q], row);
        for (int64_t q = 0; q < n; ++q) {
            if (q + kRowGroup < n) prefetch_l2(rows[q + kRowGroup], row);
            acc ^= load_row(rows[q], row);
        }
        y[0] = (float) (acc & 1) * 0.0f;
        return;
    }
    axpy_for(down->type)(rows.data(), h + j0, j1 - j0, nblk, 0, nblk, y);
}

// src: the partial sums [n_embd, kDownParts]; dst y [n_embd]: the sum of the first min(nth, kDownParts) (the
// graph runs both nodes with the same threads), split over columns.
void neuron_sum(ggml_tensor * dst, int ith, int nth, void *) {
    const ggml_tensor * part = dst->src[0];
    const int64_t n = dst->ne[0], i0 = n * ith / nth, i1 = n * (ith + 1) / nth;
    const int parts = std::min(nth, kDownParts);
    const float * p = static_cast<const float *>(part->data);
    float * y = static_cast<float *>(dst->data);
    for (int64_t i = i0; i < i1; ++i) y[i] = p[i];
    for (int q = 1; q < parts; ++q) {
        const float * pq = p + (size_t) q * n;
        for (int64_t i = i0; i < i1; ++i) y[i] += pq[i];
    }
}

// Calibration: dst = a ([n_ff, n_tok]) unchanged; adds every |a| to the layer's histogram (userdata: the
// session's score_hist[il], which stays put while recording). Thread 0 does it all (cheap): ggml-cpu calls a
// custom op on every thread whatever its n_tasks.
void record_scores(ggml_tensor * dst, int ith, int, void * userdata) {
    if (ith != 0) return;
    auto * hist = static_cast<std::vector<uint64_t> *>(userdata);
    const ggml_tensor * a = dst->src[0];
    const float * av = static_cast<const float *>(a->data);
    memcpy(dst->data, av, ggml_nbytes(a));
    const int64_t n = ggml_nelements(a);
    for (int64_t i = 0; i < n; ++i) (*hist)[sirius_score_bin(av[i])]++;
}

ggml_tensor * act(ggml_context * ctx, ggml_tensor * g, bool gelu) { return gelu ? ggml_gelu(ctx, g) : ggml_silu(ctx, g); }

// The llama_sirius_ffn_builder: single-neuron decodes (single-token ubatches in sparse mode, on layers that have
// a NeuronLayer) and score recording (dense batches); NULL (llama.cpp's own FFN) for everything else.
ggml_tensor * build(ggml_context * ctx, ggml_tensor * cur, int32_t il, ggml_tensor * up, ggml_tensor * gate,
                    ggml_tensor * down, bool gelu, bool sparse, void * user) {
    auto * s = static_cast<sirius_session *>(user);
    const int64_t n_tok = cur->ne[1];
    if (cur->ne[2] * cur->ne[3] != 1 || cur->type != GGML_TYPE_F32) return nullptr;
    if (sparse && n_tok == 1 && s->sparse && il < (int32_t) s->sparse->neurons.size() && s->sparse->neurons[il]) {
        NeuronLayer * L = s->sparse->neurons[il].get();
        const FFNOverride & o = s->sparse->table[il];
        if (o.up != up || o.gate != gate || o.down != down) return nullptr;
        ggml_tensor * x = ggml_is_contiguous(cur) ? cur : ggml_cont(ctx, cur);
        ggml_tensor * a = act(ctx, ggml_mul_mat(ctx, gate, x), gelu);
        return neuron_ffn_nodes(ctx, a, x, L);
    }
    if (!sparse && s->record_scores && il < (int32_t) s->score_hist.size() && !s->score_hist[il].empty()) {
        const int64_t n_ff = up->ne[1];
        ggml_tensor * a = act(ctx, ggml_mul_mat(ctx, gate, cur), gelu);
        ggml_tensor * args[1] = {a};
        a = ggml_custom_4d(ctx, GGML_TYPE_F32, n_ff, n_tok, 1, 1, args, 1, record_scores, GGML_N_TASKS_MAX, &s->score_hist[il]);
        ggml_tensor * h = ggml_mul(ctx, a, ggml_mul_mat(ctx, up, cur));
        ggml_format_name(h, gelu ? "ffn_geglu-%d" : "ffn_swiglu-%d", il);
        return ggml_mul_mat(ctx, down, h);
    }
    return nullptr;
}

}  // namespace

void neuron_ffn_sync(sirius_session * s) {
    const bool neurons = s->sparse && std::any_of(s->sparse->neurons.begin(), s->sparse->neurons.end(),
                                                  [](const std::unique_ptr<NeuronLayer> & L) { return L != nullptr; });
    const bool on = neurons || s->record_scores;
    llama_sirius_set_ffn_builder(s->ctx, on ? build : nullptr, on ? s : nullptr);
}

// The two kernels' nodes for one layer (build, and sirius_test_ggml_neuron_ffn's check graph): y [n_embd] from
// a = act(gate x) [n_ff] and x [n_embd]; NULL if down's type has no kernel.
ggml_tensor * neuron_ffn_nodes(ggml_context * ctx, ggml_tensor * a, ggml_tensor * x, NeuronLayer * L) {
    if (!axpy_for(L->down->type) || L->down->ne[0] % 32 != 0) return nullptr;
    ggml_tensor * args_up[3] = {a, x, L->up};
    ggml_tensor * sel = ggml_custom_4d(ctx, GGML_TYPE_F32, sel_size(L->up->ne[1]), 1, 1, 1, args_up, 3, neuron_up, GGML_N_TASKS_MAX, L);
    ggml_format_name(sel, "ffn_neuron_sel-%d", L->il);
    ggml_tensor * args_down[2] = {sel, L->down};
    ggml_tensor * part = ggml_custom_4d(ctx, GGML_TYPE_F32, L->down->ne[0], kDownParts, 1, 1, args_down, 2, neuron_down, GGML_N_TASKS_MAX, nullptr);
    ggml_tensor * args_sum[1] = {part};
    return ggml_custom_4d(ctx, GGML_TYPE_F32, L->down->ne[0], 1, 1, 1, args_sum, 1, neuron_sum, GGML_N_TASKS_MAX, nullptr);
}

int32_t neuron_nodes_kept(const ggml_tensor * y, const int32_t ** ids) {
    const float * sel = static_cast<const float *>(y->src[0]->src[0]->data);  // y = neuron_sum(neuron_down(sel, ..))
    int32_t count;
    memcpy(&count, sel, sizeof(count));
    *ids = reinterpret_cast<const int32_t *>(sel + kSelHeader);
    return count;
}

}  // namespace sirius

extern "C" {

int32_t sirius_score_bin(float v) { return (int32_t) (sirius::abs_bits(v) >> 15); }

float sirius_score_bin_floor(int32_t bin) {
    const uint32_t u = (uint32_t) std::clamp<int32_t>(bin, 0, SIRIUS_SCORE_BINS - 1) << 15;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

int32_t sirius_set_thresholds(sirius_session * s, const float * thresholds, int32_t n) {
    if (!s) return sirius::fail(SIRIUS_ERR_INVALID_ARGUMENT, "session is NULL");
    const int32_t n_layer = llama_model_n_layer(s->model->model);
    if (!thresholds || n == 0) {
        s->thresholds.clear();
        return SIRIUS_OK;
    }
    if (n != n_layer) {
        return sirius::fail(SIRIUS_ERR_INVALID_ARGUMENT, "thresholds: got " + std::to_string(n) + " values for a model of " +
                                                             std::to_string(n_layer) + " layers (one per layer)");
    }
    for (int32_t i = 0; i < n; ++i) {
        if (!std::isfinite(thresholds[i]) || thresholds[i] < 0.0f) {
            return sirius::fail(SIRIUS_ERR_INVALID_ARGUMENT, "thresholds must be finite and >= 0 (layer " + std::to_string(i) + ")");
        }
    }
    s->thresholds.assign(thresholds, thresholds + n);
    if (s->sparse && s->sparse->sparsity == SIRIUS_SPARSITY_THRESHOLD) {  // live: the kernels read it per decode
        for (auto & L : s->sparse->neurons) {
            if (L) L->threshold = s->thresholds[L->il];
        }
    }
    return SIRIUS_OK;
}

int32_t sirius_neuron_scores_record(sirius_session * s, int32_t record) {
    if (!s) return sirius::fail(SIRIUS_ERR_INVALID_ARGUMENT, "session is NULL");
    const int32_t n_layer = llama_model_n_layer(s->model->model);
    if (record) {  // reset: the graphs built from here on point into these vectors
        s->score_hist.assign(n_layer, {});
        sirius::LayerFFN f;
        for (int32_t il = 0; il < n_layer; ++il) {
            if (sirius::layer_ffn(s->model->model, il, f)) s->score_hist[il].assign(SIRIUS_SCORE_BINS, 0);
        }
    }
    s->record_scores = record != 0;
    sirius::neuron_ffn_sync(s);
    return SIRIUS_OK;
}

int32_t sirius_neuron_score_hist(const sirius_session * s, int32_t il, uint64_t * out, int32_t n_max) {
    if (!s || il < 0 || il >= (int32_t) s->score_hist.size()) return -1;
    const auto & h = s->score_hist[il];
    if (out) std::copy_n(h.begin(), std::min<size_t>(h.size(), (size_t) std::max(n_max, 0)), out);
    return (int32_t) h.size();
}

int32_t sirius_threshold_kept(const sirius_session * s, int64_t * kept, int64_t * seen) {
    if (!s) return sirius::fail(SIRIUS_ERR_INVALID_ARGUMENT, "session is NULL");
    int64_t k = 0, n = 0;
    if (s->sparse) {
        for (const auto & L : s->sparse->neurons) {
            if (!L) continue;
            k += L->kept.load();
            n += L->seen.load();
        }
    }
    if (kept) *kept = k;
    if (seen) *seen = n;
    return SIRIUS_OK;
}

}  // extern "C"
